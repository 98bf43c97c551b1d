"""Random decisions: seeded for a run, enumerated when exploring every branch.

Every random choice of the datapath (``-m statistic``, nftables ``numgen``, IPVS schedulers,
kube-proxy userspace round-robin, a cloud LB's pick of a node) calls a :class:`Chooser`.
:class:`SeededChooser` draws from the simulation's ``random.Random``; :class:`ScriptedChooser`
follows a script of indexes and records every decision, so :func:`explore` can walk all branches
and give each its probability.

Example
-------
>>> import random
>>> SeededChooser(random.Random(1)).choose([0.5, 0.5], "coin") in (0, 1)
True
>>> runs = explore(lambda ch: (ch.choose([1, 1, 2], "a"),))
>>> [(r.result, round(r.probability, 2)) for r in runs]
[((0,), 0.25), ((1,), 0.25), ((2,), 0.5)]
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


class SeededChooser:
    """Draws from one seeded generator; the only source of randomness of a run."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def choose(self, weights: list[float], label: str) -> int:
        total = sum(weights)
        x = self.rng.random() * total
        for i, w in enumerate(weights):
            x -= w
            if x < 0:
                return i
        return len(weights) - 1

    def pick(self, options: int, default: int, label: str) -> int:
        """A deterministic scheduler (round-robin, source hash) chose ``default``."""
        return default


@dataclass
class Decision:
    weights: list[float]
    label: str
    chosen: int


@dataclass
class ScriptedChooser:
    """Takes decisions from ``script``; beyond it, takes the first option with weight > 0.
    Records every decision (for :func:`explore`)."""

    script: list[int] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)

    def choose(self, weights: list[float], label: str) -> int:
        i = len(self.decisions)
        if i < len(self.script):
            chosen = self.script[i]
        else:
            chosen = next((k for k, w in enumerate(weights) if w > 0), 0)
        self.decisions.append(Decision(list(weights), label, chosen))
        return chosen

    def pick(self, options: int, default: int, label: str) -> int:
        # Over many connections a round-robin or hashing scheduler spreads evenly: explore
        # every option with equal weight.
        return self.choose([1.0] * options, label)

    @property
    def probability(self) -> float:
        p = 1.0
        for d in self.decisions:
            total = sum(d.weights)
            p *= d.weights[d.chosen] / total if total else 0.0
        return p


@dataclass
class Branch(Generic[T]):
    result: T
    probability: float
    decisions: list[Decision]


def explore(run: Callable[[ScriptedChooser], T], *, limit: int = 4096) -> list[Branch[T]]:
    """Run ``run`` once per branch of its decision tree (depth-first, first option first)."""
    results: list[Branch[T]] = []
    stack: list[list[int]] = [[]]
    while stack:
        if len(results) >= limit:
            raise RuntimeError(f"more than {limit} branches; narrow the question")
        script = stack.pop()
        chooser = ScriptedChooser(list(script))
        result = run(chooser)
        results.append(Branch(result, chooser.probability, chooser.decisions))
        alternatives = []
        for j in range(len(script), len(chooser.decisions)):
            d = chooser.decisions[j]
            prefix = [x.chosen for x in chooser.decisions[:j]]
            for k, w in enumerate(d.weights):
                if k != d.chosen and w > 0:
                    alternatives.append([*prefix, k])
        stack.extend(reversed(alternatives))
    return results
