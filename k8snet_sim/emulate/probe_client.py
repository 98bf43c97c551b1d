"""The probing client: real connections from inside a source namespace, bounded in number
and time. Standard library only; run as a script with one JSON argument::

    python probe_client.py '{"ip": "10.96.0.2", "port": 80, "proto": "TCP", "min": 2,
                             "max": 16, "batch": 2, "timeout": 2.0, "want": ["10.244.0.2:8080"],
                             "wantFailure": false}'

Attempts run in batches of ``batch`` concurrent connections (so unanswered attempts cost one
timeout per batch, not one each) until ``max`` attempts, or earlier once ``min`` attempts are
done, every address in ``want`` has answered and — with ``wantFailure`` — one attempt failed,
or once ``giveUp`` attempts all failed, or — with ``stopOnFailure`` — at the first failure.
Each attempt is one request/response exchange like the simulator's: a TCP connection that
sends a line and reads the pod server's JSON answer, or one UDP datagram and its answer on a
connected socket (a reply from another address never reaches it). Prints one JSON object:
``{"attempts": [{"ok", "pod", "peer", "address", "error"}, …]}``.

Example
-------
>>> _error_name(OSError(111, "refused"))
'ECONNREFUSED'
>>> MAX_ATTEMPTS, MAX_TIMEOUT_S
(64, 2.0)
"""

from __future__ import annotations

import errno
import json
import socket
import sys
import threading
from typing import Any

MAX_ATTEMPTS = 64  # hard cap whatever the caller asks
MAX_TIMEOUT_S = 2.0
MAX_BATCH = 16  # concurrent attempts
REQUEST = b"k8snet-sim probe\n"


def _error_name(err: BaseException) -> str:
    if isinstance(err, TimeoutError | socket.timeout):
        return "TIMEOUT"
    code = getattr(err, "errno", None)
    return errno.errorcode.get(code, type(err).__name__) if code else type(err).__name__


def attempt(ip: str, port: int, proto: str, timeout: float) -> dict[str, Any]:
    """One exchange; never raises."""
    kind = socket.SOCK_DGRAM if proto.upper() == "UDP" else socket.SOCK_STREAM
    out: dict[str, Any] = {"ok": False, "pod": None, "peer": None, "address": None, "error": None}
    sock = socket.socket(socket.AF_INET, kind)
    sock.settimeout(timeout)
    try:
        sock.connect((ip, port))
        out["local"] = "{}:{}".format(*sock.getsockname())
        sock.send(REQUEST)
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
            if kind == socket.SOCK_DGRAM:
                break
        if not data:
            out["error"] = (
                "CLOSED"  # accepted, then closed without an answer (a proxy's dial failed)
            )
            return out
        reply = json.loads(data.decode())
        out.update(
            ok=True, pod=reply.get("pod"), peer=reply.get("peer"), address=reply.get("address")
        )
    except (OSError, ValueError) as err:
        out["error"] = _error_name(err)
    finally:
        sock.close()
    return out


def run(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Attempts for one probe, in batches, with the stopping rule described above."""
    ip, port, proto = str(spec["ip"]), int(spec["port"]), str(spec.get("proto", "TCP"))
    timeout = min(float(spec.get("timeout", MAX_TIMEOUT_S)), MAX_TIMEOUT_S)
    most = max(1, min(int(spec.get("max", 8)), MAX_ATTEMPTS))
    least = max(1, min(int(spec.get("min", 1)), most))
    batch = max(1, min(int(spec.get("batch", 1)), MAX_BATCH))
    want = set(spec.get("want", []))
    want_failure = bool(spec.get("wantFailure", False))
    give_up = max(1, int(spec.get("giveUp", most)))
    stop_on_failure = bool(spec.get("stopOnFailure", False))
    results: list[dict[str, Any]] = []
    while len(results) < most:
        n = min(batch, most - len(results))
        slots: list[dict[str, Any]] = [{} for _ in range(n)]

        def one(i: int, into: list[dict[str, Any]]) -> None:
            into[i] = attempt(ip, port, proto, timeout)

        threads = [threading.Thread(target=one, args=(i, slots)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(3 * timeout + 1)
        results += [s or {"ok": False, "error": "NO_RESULT"} for s in slots]
        seen = {r.get("address") for r in results if r.get("ok")}
        failed = any(not r.get("ok") for r in results)
        if len(results) >= least and want <= seen and (failed or not want_failure):
            break
        if failed and stop_on_failure:
            break  # one failure already contradicts "every attempt answers"
        if not seen and len(results) >= give_up:
            break  # nothing ever answered: unreachable, no point in waiting out every timeout
    return results


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    spec = json.loads(args[0])
    sys.stdout.write(json.dumps({"attempts": run(spec)}) + "\n")


if __name__ == "__main__":
    main()
