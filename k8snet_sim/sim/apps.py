"""Applications that live in namespaces: the tiny server every pod runs.

Each pod listens on its declared container ports and answers a request with its own name and
the peer address it saw — which is how a trace learns which endpoint it reached and what
source address the backend saw.

Example
-------
>>> PodServer("default/web-0", response_bytes=1000).pod
'default/web-0'
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from k8snet_sim.net.addr import ip_str
from k8snet_sim.sim.sockets import Endpoint, Message, send_message

if TYPE_CHECKING:
    from k8snet_sim.sim.simulation import Simulation

APP_PROCESS = "app"  # the CPU account of backend applications


class PodServer:
    """Answers every request on a connection; stateless, shared by all connections of a port."""

    def __init__(self, pod: str, *, response_bytes: int = 1000) -> None:
        self.pod = pod
        self.response_bytes = response_bytes

    def on_established(self, sim: Simulation, conn: Endpoint) -> None:
        return None

    def on_message(self, sim: Simulation, conn: Endpoint, message: Message) -> None:
        if message.kind != "request":
            return
        size = int(message.data.get("responseBytes", self.response_bytes))
        reply = Message(
            "response",
            size,
            {
                "pod": self.pod,
                "peer": f"{ip_str(conn.remote[0])}:{conn.remote[1]}",
                "address": f"{ip_str(conn.local[0])}:{conn.local[1]}",
            },
        )
        # The application's own work runs on the pod's node, next to the packet processing.
        delay = sim.charge(sim.ns(conn.ns), sim.costs.app_service, APP_PROCESS)
        sim.later(delay, send_message, sim, conn, reply)

    def on_closed(self, sim: Simulation, conn: Endpoint, reason: str) -> None:
        return None
