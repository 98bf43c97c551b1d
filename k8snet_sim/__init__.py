"""k8snet_sim."""
