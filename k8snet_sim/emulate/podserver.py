"""The tiny server every emulated pod runs: it answers with its name and the peer it saw.

Run as a script inside the pod's namespace (standard library only, so it starts fast and never
imports the simulator)::

    python podserver.py --name default/web-0 --tcp 8080 --udp 53 --lifetime 600

Each TCP connection gets one JSON line, each UDP datagram one JSON datagram::

    {"pod": "default/web-0", "peer": "10.244.0.3:41234", "address": "10.244.0.2:8080"}

``peer`` is the source the backend saw (after any NAT), ``address`` the local address that
accepted. The server prints ``ready`` once every port is bound and exits by itself after
``--lifetime`` seconds, so a forgotten server cannot live on.

Example
-------
>>> json.loads(answer("default/web-0", ("10.0.0.3", 4000), ("10.0.0.2", 8080)))["peer"]
'10.0.0.3:4000'
"""

from __future__ import annotations

import argparse
import json
import socket
import socketserver
import sys
import threading
import time

READ_TIMEOUT_S = 2.0


def answer(name: str, peer: tuple[str, int], local: tuple[str, int]) -> bytes:
    """The reply to one request."""
    return (
        json.dumps(
            {"pod": name, "peer": f"{peer[0]}:{peer[1]}", "address": f"{local[0]}:{local[1]}"}
        )
        + "\n"
    ).encode()


class _TCPHandler(socketserver.BaseRequestHandler):
    server: _TCPServer

    def handle(self) -> None:
        conn: socket.socket = self.request
        conn.settimeout(READ_TIMEOUT_S)
        try:
            conn.recv(4096)  # the request line; its content does not matter
            conn.sendall(answer(self.server.pod_name, self.client_address, conn.getsockname()))
        except OSError:
            return


class _TCPServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    pod_name = ""


class _UDPHandler(socketserver.BaseRequestHandler):
    server: _UDPServer

    def handle(self) -> None:
        _, sock = self.request
        # The local address as the client addressed it: ask the kernel which address a reply
        # to the client would come from (a wildcard-bound socket does not know).
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            probe.connect(self.client_address)
            local = (probe.getsockname()[0], self.server.server_address[1])
        finally:
            probe.close()
        sock.sendto(answer(self.server.pod_name, self.client_address, local), self.client_address)


class _UDPServer(socketserver.ThreadingUDPServer):
    allow_reuse_address = True
    daemon_threads = True
    pod_name = ""


def serve(name: str, tcp: list[int], udp: list[int], lifetime: float) -> None:
    servers: list[socketserver.BaseServer] = []
    for port in tcp:
        t = _TCPServer(("0.0.0.0", port), _TCPHandler)
        t.pod_name = name
        servers.append(t)
    for port in udp:
        u = _UDPServer(("0.0.0.0", port), _UDPHandler)
        u.pod_name = name
        servers.append(u)
    for s in servers:
        threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    time.sleep(lifetime)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--tcp", type=int, action="append", default=[])
    parser.add_argument("--udp", type=int, action="append", default=[])
    parser.add_argument("--lifetime", type=float, default=600.0)
    args = parser.parse_args(argv)
    serve(args.name, args.tcp, args.udp, args.lifetime)


if __name__ == "__main__":
    main()
