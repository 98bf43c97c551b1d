"""``python -m k8snet_sim`` runs the command line."""

from k8snet_sim.cli import main

if __name__ == "__main__":
    main()
