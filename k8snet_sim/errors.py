"""Exceptions raised by k8snet_sim. Every error the library raises derives from K8sNetSimError.

Example
-------
>>> try:
...     raise UnknownEndpoint("pod/default/nope", hint="list pods with `k8snet-sim validate`")
... except K8sNetSimError as err:
...     print(err)
unknown endpoint pod/default/nope (hint: list pods with `k8snet-sim validate`)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class K8sNetSimError(Exception):
    """Base class of every error raised by k8snet_sim."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if not hint else f"{message} (hint: {hint})")


@dataclass(frozen=True)
class Diagnostic:
    """One problem found in user input, located in its file.

    Rendered as ``file:line:col: dotted.path: message`` followed by a hint line.
    ``line`` and ``col`` are 1-based; 0 means unknown.
    """

    file: str
    line: int
    col: int
    path: str
    message: str
    hint: str = ""

    def render(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}"
        path = f" {self.path}:" if self.path else ""
        text = f"{where}:{path} {self.message}"
        if self.hint:
            text += f"\n    hint: {self.hint}"
        return text

    def sort_key(self) -> tuple[str, int, int, str]:
        return (self.file, self.line, self.col, self.path)


class ScenarioError(K8sNetSimError):
    """The scenario (or a file it names) is invalid. Carries every problem found at once."""

    def __init__(self, diagnostics: list[Diagnostic], *, partial: Any = None) -> None:
        # Duplicates collapse: two checks may find the same problem.
        self.diagnostics = sorted(dict.fromkeys(diagnostics), key=Diagnostic.sort_key)
        # The scenario as loaded despite these problems, when every object in it parsed: a
        # later stage (the control plane) may look at it for more problems to report at once.
        self.partial = partial
        super().__init__(
            f"{len(self.diagnostics)} error(s) in scenario:\n"
            + "\n".join(d.render() for d in self.diagnostics)
        )

    def render(self) -> str:
        return "\n".join(d.render() for d in self.diagnostics)


class RulesError(K8sNetSimError):
    """An iptables-save / nft dump could not be parsed or uses something not modelled."""

    def __init__(
        self, message: str, *, line: int = 0, file: str = "<rules>", hint: str | None = None
    ):
        self.line = line
        self.file = file
        super().__init__(f"{file}:{line}: {message}" if line else message, hint=hint)


class UnknownEndpoint(K8sNetSimError):
    """A source or target reference (``pod/NS/NAME``, ``service/NS/NAME:PORT``…) names nothing."""

    def __init__(self, ref: str, *, hint: str | None = None) -> None:
        self.ref = ref
        super().__init__(f"unknown endpoint {ref}", hint=hint)


class NotSupported(K8sNetSimError):
    """The request is valid but asks for something the simulator does not model."""
