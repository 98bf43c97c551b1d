"""Run commands in our namespaces and clean up after ourselves, whatever happens.

The :class:`Janitor` of one emulation run is the only thing that creates namespaces and starts
processes. It remembers each one, and removes them — processes by PID first, then namespaces —
on success, on an exception, on SIGINT/SIGTERM and at interpreter exit. It refuses to touch a
namespace whose name does not start with ``k8ns-<run>-`` and never runs a command outside one of
our namespaces (apart from ``ip netns add/del`` of our own names).

Example
-------
>>> j = Janitor("doc1")
>>> j.owns("k8ns-doc1-node-a"), j.owns("k8ns-other-node-a"), j.owns("eth0")
(True, False, False)
>>> j.cleanup()   # nothing created: nothing to do
[]
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import Any

from k8snet_sim.emulate.plan import PREFIX, Step
from k8snet_sim.errors import K8sNetSimError

COMMAND_TIMEOUT_S = 20.0
PR_SET_PDEATHSIG = 1


class EmulationError(K8sNetSimError):
    """A command of the emulation failed, or the machine cannot emulate at all."""


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # A server must not outlive us if we are killed with SIGKILL (no handler can run then).
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def list_namespaces() -> list[str]:
    """Names from ``ip netns list`` (read-only)."""
    out = subprocess.run(
        ["ip", "netns", "list"],
        capture_output=True,
        text=True,
        check=False,
        timeout=COMMAND_TIMEOUT_S,
    )
    return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]


def leftovers(run_id: str | None = None) -> list[str]:
    """Our namespaces still present: of one run, or of any run (``k8ns-*``)."""
    prefix = f"{PREFIX}{run_id}-" if run_id else PREFIX
    return [n for n in list_namespaces() if n.startswith(prefix)]


class Janitor:
    """Creates, tracks and removes the namespaces and processes of one run."""

    def __init__(self, run_id: str, *, keep: bool = False) -> None:
        self.run_id = run_id
        self.prefix = f"{PREFIX}{run_id}-"
        self.keep = keep
        self.namespaces: list[str] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        self.log: list[str] = []
        self._previous: dict[int, Any] = {}
        self._stderr: dict[int, Any] = {}
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- ownership

    def owns(self, name: str) -> bool:
        return name.startswith(self.prefix) and "/" not in name and len(name) > len(self.prefix)

    def _require(self, name: str | None) -> str:
        if name is None or not self.owns(name):
            raise EmulationError(
                f"refusing to act on namespace {name!r}: not one of run "
                f"{self.run_id} ({self.prefix}…)"
            )
        return name

    # ---------------------------------------------------------------- commands

    def run(self, step: Step, *, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run one plan step (see :class:`~k8snet_sim.emulate.plan.Step`)."""
        argv = list(step.argv)
        if step.ns is None:
            # Only `ip netns add|del NAME` may run outside a namespace, and only on our names.
            if argv[:3] not in (["ip", "netns", "add"], ["ip", "netns", "del"]) or len(argv) != 4:
                raise EmulationError(f"refusing to run {step.render()!r} in the root namespace")
            self._require(argv[3])
            if argv[2] == "add":
                if argv[3] in list_namespaces():
                    # Another run with this id (a kept one?): never adopt, never delete it.
                    raise EmulationError(
                        f"namespace {argv[3]} already exists",
                        hint="pick another --run-id, or emulate-cleanup it",
                    )
                self.namespaces.append(argv[3])
        else:
            ns = self._require(step.ns)
            if argv[0] in ("ip", "bridge"):
                # `ip -n NS …` / `bridge -n NS …` switch namespace themselves.
                if argv[1:3] != ["-n", ns]:
                    raise EmulationError(f"{argv[0]} command without -n {ns}: {step.render()}")
            else:
                argv = ["ip", "netns", "exec", ns, *argv]
        self.log.append(step.render() if step.ns is None else f"[{step.ns}] {step.render()}")
        try:
            done = subprocess.run(
                argv,
                input=step.stdin or None,
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as err:
            raise EmulationError(f"{step.render()} took longer than {COMMAND_TIMEOUT_S}s") from err
        if check and done.returncode != 0:
            raise EmulationError(
                f"{step.why or 'command'} failed in {step.ns or 'netns'}: "
                f"{step.render()}\n{done.stderr.strip()}"
            )
        return done

    def exec(
        self,
        ns: str,
        argv: Sequence[str],
        *,
        stdin: str = "",
        check: bool = True,
        timeout: float = COMMAND_TIMEOUT_S,
    ) -> subprocess.CompletedProcess[str]:
        """Run a program inside namespace ``ns`` and wait for it (bounded by ``timeout``)."""
        full = ["ip", "netns", "exec", self._require(ns), *argv]
        try:
            done = subprocess.run(
                full,
                input=stdin or None,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as err:
            raise EmulationError(f"{' '.join(argv)} in {ns} took longer than {timeout}s") from err
        if check and done.returncode != 0:
            raise EmulationError(f"{' '.join(argv[:3])}… failed in {ns}: {done.stderr.strip()}")
        return done

    def spawn(self, ns: str, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        """Start a long-running program inside ``ns``; remembered and killed at cleanup.

        ``ip netns exec`` execs the program, so the PID we hold is the program's own."""
        full = ["ip", "netns", "exec", self._require(ns), *argv]
        # stderr to a file, not a pipe nobody reads: a chatty server must never block on it.
        errors = tempfile.TemporaryFile()  # noqa: SIM115 - closed at cleanup, with the process
        proc = subprocess.Popen(
            full,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=errors,
            start_new_session=True,
            preexec_fn=None if self.keep else _die_with_parent,
        )
        self.processes.append(proc)
        self._stderr[proc.pid] = errors
        return proc

    def stderr_of(self, proc: subprocess.Popen[bytes]) -> str:
        """What a started process wrote to stderr so far (last 2000 characters)."""
        errors = self._stderr.get(proc.pid)
        if errors is None:
            return ""
        errors.seek(0)
        return errors.read().decode(errors="replace").strip()[-2000:]

    # ---------------------------------------------------------------- cleanup

    def cleanup(self) -> list[str]:
        """Kill our processes (by PID) and delete our namespaces; safe to call many times.
        Returns what was removed."""
        removed: list[str] = []
        with self._lock:
            procs, self.processes = self.processes, []
            names, self.namespaces = self.namespaces, []
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
        deadline = time.monotonic() + 2.0
        for proc in procs:
            try:
                proc.wait(timeout=max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=2.0)
            if proc.stdout is not None:
                proc.stdout.close()
            errors = self._stderr.pop(proc.pid, None)
            if errors is not None:
                errors.close()
            removed.append(f"pid {proc.pid}")
        present = set(list_namespaces())
        for name in reversed(names):
            if not self.owns(name) or name not in present:
                continue
            self._kill_inside(name)
            subprocess.run(
                ["ip", "netns", "del", name],
                capture_output=True,
                check=False,
                timeout=COMMAND_TIMEOUT_S,
            )
            removed.append(name)
        return removed

    def _kill_inside(self, name: str) -> None:
        """Any process still inside one of our namespaces was started by us (directly or by a
        child): kill it by PID so the namespace can go away."""
        out = subprocess.run(
            ["ip", "netns", "pids", name],
            capture_output=True,
            text=True,
            check=False,
            timeout=COMMAND_TIMEOUT_S,
        )
        for pid in (int(p) for p in out.stdout.split() if p.isdigit()):
            if pid != os.getpid():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    # ---------------------------------------------------------------- lifetime

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.cleanup()
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    @contextlib.contextmanager
    def guard(self) -> Iterator[Janitor]:
        """Clean up on exit from the block (normal, exception, SIGINT/SIGTERM) and at
        interpreter exit; with ``keep`` only on failure."""
        atexit.register(self.cleanup)
        main = threading.current_thread() is threading.main_thread()
        if main:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._on_signal)
        ok = False
        try:
            yield self
            ok = True
        finally:
            if main:
                for signum, handler in self._previous.items():
                    signal.signal(signum, handler)
                self._previous.clear()
            if not (ok and self.keep):
                self.cleanup()
            atexit.unregister(self.cleanup)


def cleanup_run(run_id: str) -> list[str]:
    """Remove what a kept run (``--keep``) left: processes inside its namespaces, then the
    namespaces themselves."""
    janitor = Janitor(run_id)
    janitor.namespaces = leftovers(run_id)
    return janitor.cleanup()


def require_root() -> None:
    if os.geteuid() != 0:
        raise EmulationError(
            "emulate needs root (network namespaces, iptables)",
            hint="run it with sudo, or in a VM or container where you are root",
        )
    if sys.platform != "linux":
        raise EmulationError("emulate needs Linux network namespaces")
