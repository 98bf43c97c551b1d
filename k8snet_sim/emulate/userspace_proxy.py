"""A small real userspace kube-proxy: one socket per proxy port, endpoints round-robin.

Run as a script inside a node's namespace (standard library only)::

    python userspace_proxy.py --config '{"ports": [{"name": "default/web:http",
        "proto": "TCP", "port": 40000, "endpoints": ["10.244.0.2:8080"]}]}'

Like upstream's userspace proxier (K19 ``pkg/proxy/userspace/proxysocket.go``,
``roundrobin.go``) it accepts on the proxy port the portal rules REDIRECT/DNAT to, picks the
next endpoint of that Service port round-robin, dials it from the node (so the backend sees the
node's address), retries the next endpoint after 250 ms, 500 ms, 1 s, 2 s, and copies bytes
both ways. UDP: every datagram is relayed on a fresh socket to the next endpoint and the first
answer is sent back from the proxy port. ClientIP session affinity keeps a client on its
endpoint for ``affinitySeconds`` (``SIGUSR1`` forgets every affinity, so a probe can start
afresh). Prints ``ready`` once every port is bound; exits after ``--lifetime``.

Example
-------
>>> rr = RoundRobin(["10.0.0.1:80", "10.0.0.2:80"])
>>> [rr.next() for _ in range(3)]
[('10.0.0.1', 80), ('10.0.0.2', 80), ('10.0.0.1', 80)]
>>> sticky = RoundRobin(["10.0.0.1:80", "10.0.0.2:80"], affinity_s=60)
>>> [sticky.next("10.9.9.9") for _ in range(2)], sticky.next("10.9.9.8")
([('10.0.0.1', 80), ('10.0.0.1', 80)], ('10.0.0.2', 80))
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import socket
import sys
import threading
import time

DIAL_TIMEOUTS_S = (0.25, 0.5, 1.0, 2.0)
UDP_REPLY_TIMEOUT_S = 2.0
IDLE_TIMEOUT_S = 10.0


class RoundRobin:
    """Upstream's LoadBalancerRR: one index per Service port, optional ClientIP affinity."""

    def __init__(self, endpoints: list[str], affinity_s: float = 0.0) -> None:
        self.endpoints = [(h, int(p)) for h, _, p in (e.rpartition(":") for e in endpoints)]
        self.index = 0
        self.affinity_s = affinity_s
        self.affinity: dict[str, tuple[int, float]] = {}  # client IP → (endpoint, last used)
        self.lock = threading.Lock()

    def next(self, client: str = "", *, retry: bool = False) -> tuple[str, int] | None:
        with self.lock:
            if not self.endpoints:
                return None
            now = time.monotonic()
            if self.affinity_s and not retry:
                hit = self.affinity.get(client)
                if hit is not None and now - hit[1] < self.affinity_s:
                    self.affinity[client] = (hit[0], now)
                    return self.endpoints[hit[0]]
            index = self.index % len(self.endpoints)
            self.index = (index + 1) % len(self.endpoints)
            if self.affinity_s:
                self.affinity[client] = (index, now)
            return self.endpoints[index]

    def forget(self) -> None:
        with self.lock:
            self.affinity.clear()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (dst, src):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


def _serve_tcp_client(client: socket.socket, rr: RoundRobin) -> None:
    backend = None
    peer = client.getpeername()[0]
    for attempt, timeout in enumerate(DIAL_TIMEOUTS_S):
        ep = rr.next(peer, retry=attempt > 0)
        if ep is None:
            break
        try:
            backend = socket.create_connection(ep, timeout=timeout)
            break
        except OSError:
            continue
    if backend is None:
        client.close()
        return
    backend.settimeout(IDLE_TIMEOUT_S)
    client.settimeout(IDLE_TIMEOUT_S)
    back = threading.Thread(target=_pump, args=(backend, client), daemon=True)
    back.start()
    _pump(client, backend)
    back.join(IDLE_TIMEOUT_S)
    client.close()
    backend.close()


def _tcp_loop(port: int, rr: RoundRobin, ready: threading.Event) -> None:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(128)
    ready.set()
    while True:
        client, _ = srv.accept()
        threading.Thread(target=_serve_tcp_client, args=(client, rr), daemon=True).start()


def _relay_udp(srv: socket.socket, data: bytes, client: tuple[str, int], rr: RoundRobin) -> None:
    ep = rr.next(client[0])
    if ep is None:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
        out.settimeout(UDP_REPLY_TIMEOUT_S)
        try:
            out.connect(ep)
            out.send(data)
            reply = out.recv(65536)
        except OSError:
            return
    srv.sendto(reply, client)


def _udp_loop(port: int, rr: RoundRobin, ready: threading.Event) -> None:
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("0.0.0.0", port))
    ready.set()
    while True:
        data, client = srv.recvfrom(65536)
        threading.Thread(target=_relay_udp, args=(srv, data, client, rr), daemon=True).start()


def serve(config: dict[str, object], lifetime: float) -> None:
    events = []
    balancers: list[RoundRobin] = []

    def forget(signum: int, frame: object) -> None:
        for b in balancers:
            b.forget()

    signal.signal(signal.SIGUSR1, forget)
    for spec in config.get("ports", []):  # type: ignore[attr-defined]
        rr = RoundRobin(list(spec["endpoints"]), float(spec.get("affinitySeconds", 0)))
        balancers.append(rr)
        loop = _udp_loop if str(spec["proto"]).upper() == "UDP" else _tcp_loop
        ready = threading.Event()
        threading.Thread(target=loop, args=(int(spec["port"]), rr, ready), daemon=True).start()
        events.append(ready)
    for ev in events:
        if not ev.wait(5.0):
            sys.exit("a proxy port could not be bound")
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    time.sleep(lifetime)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="JSON: {ports: [{name, proto, port, …}]}")
    parser.add_argument("--lifetime", type=float, default=600.0)
    args = parser.parse_args(argv)
    serve(json.loads(args.config), args.lifetime)


if __name__ == "__main__":
    main()
