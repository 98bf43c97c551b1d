"""iptables targets: what a matching rule does.

Each builder turns ``-j NAME --option …`` into a :class:`CompiledTarget`. Jumps, gotos and
RETURN are walked by the engine; the others carry an ``apply(packet, ctx)`` that returns
``(verdict or None, effect text)``. The effect text is built only when ``ctx.events`` is not
None, so a walk without tracing pays nothing for it.

NAT targets (DNAT, SNAT, MASQUERADE, REDIRECT) ask ``ctx.nat`` to set up the binding and then
end the walk with ACCEPT, as the kernel's NAT targets return NF_ACCEPT. A NAT target reached
while ``ctx.nat`` is None is a broken datapath contract (the nat table only runs for the first
packet of a connection), so it raises :class:`~k8snet_sim.errors.RulesError`.

Example
-------
>>> t = build_target("MARK", [Option("--or-mark", ("0x4000",))], rule_label="KUBE-MARK-MASQ")
>>> t.kind is TargetKind.CONTINUE
True
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from k8snet_sim.errors import RulesError
from k8snet_sim.net.addr import ip_str
from k8snet_sim.net.packet import Packet
from k8snet_sim.netfilter.context import HookResult, PacketContext, Verdict
from k8snet_sim.netfilter.matches import (
    PORT_PROTOCOLS,
    Option,
    OptionDef,
    parse_ipv4,
    parse_mark,
    parse_number,
    parse_port,
)

Outcome = tuple[HookResult | None, str]
Apply = Callable[[Packet, PacketContext], Outcome]


class TargetKind(enum.IntEnum):
    CONTINUE = 0  # no target, MARK, LOG: go on with the next rule
    VERDICT = 1  # ACCEPT, DROP, REJECT and the NAT targets: the walk ends
    RETURN = 2
    JUMP = 3
    GOTO = 4


@dataclass(frozen=True, slots=True)
class CompiledTarget:
    """``pure``: applying the target changes nothing (packet, context, state) and its outcome
    is a constant — jumps, RETURN, ACCEPT/DROP/REJECT, LOG. A walk through pure targets and
    declared matches only may be memoised (``engine.TableEngine``)."""

    kind: TargetKind
    name: str  # target or chain name as written
    apply: Apply | None = None
    chain: str = ""  # destination of JUMP / GOTO
    pure: bool = False


@dataclass(frozen=True, slots=True)
class TargetDef:
    options: tuple[OptionDef, ...]
    build: Callable[[dict[str, Option], str, int | None], CompiledTarget]
    nat: bool = False  # only valid in the nat table
    hooks: frozenset[str] = frozenset()  # builtin chains it may be reached from (empty: any)


NAT_TARGETS = frozenset({"DNAT", "SNAT", "MASQUERADE", "REDIRECT"})
# Targets iptables has that k8snet_sim does not evaluate: rejected with a clear error.
NOT_MODELLED = frozenset({
    "CONNMARK", "CT", "NOTRACK", "TPROXY", "TRACE", "NFLOG", "NFQUEUE", "QUEUE", "TCPMSS",
    "CLASSIFY", "DSCP", "TOS", "TTL", "SET", "AUDIT", "CHECKSUM", "CONNSECMARK", "SECMARK",
    "NETMAP", "ULOG", "TEE", "IDLETIMER", "LED", "SYNPROXY", "HMARK", "CLUSTERIP", "ECN",
})  # fmt: skip

REJECT_WITH = {
    "icmp-net-unreachable": "icmp-net-unreachable", "net-unreach": "icmp-net-unreachable",
    "icmp-host-unreachable": "icmp-host-unreachable", "host-unreach": "icmp-host-unreachable",
    "icmp-port-unreachable": "icmp-port-unreachable", "port-unreach": "icmp-port-unreachable",
    "icmp-proto-unreachable": "icmp-proto-unreachable", "proto-unreach": "icmp-proto-unreachable",
    "icmp-net-prohibited": "icmp-net-prohibited", "net-prohib": "icmp-net-prohibited",
    "icmp-host-prohibited": "icmp-host-prohibited", "host-prohib": "icmp-host-prohibited",
    "icmp-admin-prohibited": "icmp-admin-prohibited", "admin-prohib": "icmp-admin-prohibited",
    "tcp-reset": "tcp-reset", "tcp-rst": "tcp-reset",
}  # fmt: skip


def _verdict(verdict: Verdict, label: str, reject_with: str = "") -> CompiledTarget:
    result = HookResult(verdict, reason=label, reject_with=reject_with)
    effect = f"REJECT ({reject_with})" if reject_with else verdict.value
    outcome: Outcome = (result, effect)
    return CompiledTarget(TargetKind.VERDICT, verdict.value, lambda p, c: outcome, pure=True)


def _accept(opts: dict[str, Option], label: str, proto: int | None) -> CompiledTarget:
    return _verdict(Verdict.ACCEPT, label)


def _drop(opts: dict[str, Option], label: str, proto: int | None) -> CompiledTarget:
    return _verdict(Verdict.DROP, label)


def _return(opts: dict[str, Option], label: str, proto: int | None) -> CompiledTarget:
    return CompiledTarget(TargetKind.RETURN, "RETURN", pure=True)


def _reject(opts: dict[str, Option], label: str, proto: int | None) -> CompiledTarget:
    given = opts["--reject-with"].value if "--reject-with" in opts else "icmp-port-unreachable"
    kind = REJECT_WITH.get(given)
    if kind is None:
        raise RulesError(f"unknown --reject-with `{given}`", hint=", ".join(sorted(REJECT_WITH)))
    if kind == "tcp-reset" and proto != 6:
        raise RulesError("REJECT --reject-with tcp-reset needs -p tcp")
    return _verdict(Verdict.REJECT, label, kind)


# MARK: every form is the kernel's single operation mark = (mark & ~mask) ^ value.
_MARK_FORMS = {"--set-xmark": "set-xmark", "--set-mark": "set", "--and-mark": "and",
               "--or-mark": "or", "--xor-mark": "xor"}  # fmt: skip


def _mark(opts: dict[str, Option], label: str, proto: int | None) -> CompiledTarget:
    if len(opts) != 1:
        raise RulesError(
            "MARK needs exactly one of --set-xmark, --set-mark, --and-mark, --or-mark, --xor-mark"
        )
    opt = next(iter(opts.values()))
    form = _MARK_FORMS[opt.name]
    if form in ("set-xmark", "set"):
        value, mask = parse_mark(opt.value)
        text = f"{form} {opt.value}"
        if form == "set":  # libxt_MARK: --set-mark V/M is xmark V with mask V|M
            mask |= value
    else:
        operand = parse_number(opt.value, opt.name)
        value, mask = {
            "and": (0, ~operand & 0xFFFFFFFF),
            "or": (operand, operand),
            "xor": (operand, 0),
        }[form]
        text = f"{form} {opt.value}"
    keep = ~mask & 0xFFFFFFFF

    def apply(packet: Packet, ctx: PacketContext) -> Outcome:
        packet.mark = (packet.mark & keep) ^ value
        if ctx.events is None:
            return None, ""
        return None, f"MARK {text} → {packet.mark:#x}"

    return CompiledTarget(TargetKind.CONTINUE, "MARK", apply)


def _nat_address(text: str, option: str, proto: int | None) -> tuple[int, int | None]:
    """``ip[:port]`` for --to-destination / --to-source; ranges are not modelled."""
    address, colon, port_text = text.partition(":")
    if "-" in address:
        raise RulesError(f"{option} {text}: address ranges are not modelled")
    try:
        addr = parse_ipv4(address)
    except ValueError:
        raise RulesError(f"{option} {text}: bad address `{address}`") from None
    if not colon:
        return addr, None
    if "-" in port_text:
        raise RulesError(f"{option} {text}: port ranges are not modelled")
    if proto not in PORT_PROTOCOLS:
        raise RulesError(f"{option} {text}: a port needs -p tcp, -p udp or -p sctp")
    return addr, parse_port(port_text)


def _need_nat(ctx: PacketContext, target: str) -> NoReturn:
    raise RulesError(
        f"{target} reached without NAT actions (ctx.nat is None)",
        hint="the nat table runs only for the first packet of a connection, with ctx.nat set",
    )


def _dnat_or_snat(name: str, option: str) -> Callable[..., CompiledTarget]:
    def build(opts: dict[str, Option], label: str, proto: int | None) -> CompiledTarget:
        for flag in ("--random", "--persistent", "--random-fully"):
            if flag in opts:
                raise RulesError(f"{name} {flag} is not modelled")
        if option not in opts:
            raise RulesError(f"{name} needs {option} ip[:port]")
        addr, port = _nat_address(opts[option].value, option, proto)
        shown = ip_str(addr) + (f":{port}" if port is not None else "")
        accepted = HookResult(Verdict.ACCEPT, reason=label)
        dnat = name == "DNAT"

        def apply(packet: Packet, ctx: PacketContext) -> Outcome:
            nat = ctx.nat
            if nat is None:
                _need_nat(ctx, name)
            elif dnat:
                nat.dnat(addr, port)
            else:
                nat.snat(addr, port)
            return accepted, f"{name} → {shown}"

        return CompiledTarget(TargetKind.VERDICT, name, apply)

    return build


def _masquerade(opts: dict[str, Option], label: str, proto: int | None) -> CompiledTarget:
    if "--to-ports" in opts:
        raise RulesError(
            "MASQUERADE --to-ports is not modelled",
            hint="the NAT actions choose the source port; drop --to-ports",
        )
    fully = "--random-fully" in opts
    # --random (hashed port choice) is accepted and treated like the default allocation.
    effect = "MASQUERADE" + (" (random-fully)" if fully else "")
    accepted = HookResult(Verdict.ACCEPT, reason=label)

    def apply(packet: Packet, ctx: PacketContext) -> Outcome:
        if ctx.nat is None:
            _need_nat(ctx, "MASQUERADE")
        else:
            ctx.nat.masquerade(random_fully=fully)
        return accepted, effect

    return CompiledTarget(TargetKind.VERDICT, "MASQUERADE", apply)


def _redirect(opts: dict[str, Option], label: str, proto: int | None) -> CompiledTarget:
    for flag in ("--random",):
        if flag in opts:
            raise RulesError(f"REDIRECT {flag} is not modelled")
    port: int | None = None
    if "--to-ports" in opts:
        text = opts["--to-ports"].value
        if "-" in text:
            raise RulesError(f"REDIRECT --to-ports {text}: port ranges are not modelled")
        if proto not in PORT_PROTOCOLS:
            raise RulesError("REDIRECT --to-ports needs -p tcp, -p udp or -p sctp")
        port = parse_port(text)
    effect = "REDIRECT" + (f" → :{port}" if port is not None else "")
    accepted = HookResult(Verdict.ACCEPT, reason=label)

    def apply(packet: Packet, ctx: PacketContext) -> Outcome:
        if ctx.nat is None:
            _need_nat(ctx, "REDIRECT")
        else:
            ctx.nat.redirect(port)
        return accepted, effect

    return CompiledTarget(TargetKind.VERDICT, "REDIRECT", apply)


_LOG_LEVELS = ("emerg", "alert", "crit", "error", "warning", "notice", "info", "debug")


def _log(opts: dict[str, Option], label: str, proto: int | None) -> CompiledTarget:
    prefix = opts["--log-prefix"].value if "--log-prefix" in opts else ""
    if len(prefix) > 29:
        raise RulesError(f"--log-prefix `{prefix}` longer than 29 characters")
    if "--log-level" in opts:
        level = opts["--log-level"].value.lower()
        if level not in _LOG_LEVELS and not (level.isdigit() and int(level) <= 7):
            raise RulesError(f"bad --log-level `{level}`", hint=" ".join(_LOG_LEVELS))
    effect = f"LOG {prefix!r}" if prefix else "LOG"
    outcome: Outcome = (None, effect)
    return CompiledTarget(TargetKind.CONTINUE, "LOG", lambda p, c: outcome, pure=True)


def _flags(*names: str) -> tuple[OptionDef, ...]:
    return tuple(OptionDef((n,), nargs=0) for n in names)


TARGETS: dict[str, TargetDef] = {
    "ACCEPT": TargetDef((), _accept),
    "DROP": TargetDef((), _drop),
    "RETURN": TargetDef((), _return),
    "REJECT": TargetDef(
        (OptionDef(("--reject-with",)),),
        _reject,
        hooks=frozenset({"INPUT", "FORWARD", "OUTPUT"}),
    ),
    "MARK": TargetDef(tuple(OptionDef((n,)) for n in _MARK_FORMS), _mark),
    "DNAT": TargetDef(
        (OptionDef(("--to-destination",)), *_flags("--random", "--persistent")),
        _dnat_or_snat("DNAT", "--to-destination"),
        nat=True,
        hooks=frozenset({"PREROUTING", "OUTPUT"}),
    ),
    "SNAT": TargetDef(
        (OptionDef(("--to-source",)), *_flags("--random", "--random-fully", "--persistent")),
        _dnat_or_snat("SNAT", "--to-source"),
        nat=True,
        hooks=frozenset({"POSTROUTING", "INPUT"}),
    ),
    "MASQUERADE": TargetDef(
        (OptionDef(("--to-ports",)), *_flags("--random", "--random-fully")),
        _masquerade,
        nat=True,
        hooks=frozenset({"POSTROUTING"}),
    ),
    "REDIRECT": TargetDef(
        (OptionDef(("--to-ports",)), *_flags("--random")),
        _redirect,
        nat=True,
        hooks=frozenset({"PREROUTING", "OUTPUT"}),
    ),
    "LOG": TargetDef(
        (
            OptionDef(("--log-prefix",)),
            OptionDef(("--log-level",)),
            *_flags("--log-tcp-sequence", "--log-tcp-options", "--log-ip-options", "--log-uid"),
        ),
        _log,
    ),
}


def find_target(name: str) -> TargetDef | None:
    """The target extension ``name``; None for a user chain; an error when not modelled."""
    if name in NOT_MODELLED:
        raise RulesError(
            f"target `{name}` is not modelled by k8snet_sim",
            hint=f"modelled targets: {', '.join(TARGETS)}",
        )
    return TARGETS.get(name)


def build_target(
    name: str,
    options: list[Option],
    *,
    rule_label: str,
    protocol: int | None = None,
    goto: bool = False,
    table: str = "filter",
) -> CompiledTarget:
    """Compile ``-j name`` (or ``-g name``) with its options.

    A name that is not a target extension is a jump to a user chain; whether that chain exists
    is checked when the table is committed. ``rule_label`` becomes the verdict's reason.
    """
    definition = find_target(name)
    if definition is None:
        if options:
            raise RulesError(f"option {options[0].name} given to chain `{name}`, not a target")
        kind = TargetKind.GOTO if goto else TargetKind.JUMP
        return CompiledTarget(kind, name, chain=name, pure=True)
    if goto:
        raise RulesError(f"-g {name}: goto needs a user-defined chain")
    if definition.nat and table != "nat":
        raise RulesError(f"{name} is only valid in the nat table (used in {table})")
    spellings = {spelling: d.names[0] for d in definition.options for spelling in d.names}
    by_name: dict[str, Option] = {}
    for opt in options:
        canonical = spellings.get(opt.name)
        if canonical is None:
            raise RulesError(f"target {name} has no option {opt.name}")
        if canonical in by_name:
            raise RulesError(f"{name}: {opt.name} given twice")
        by_name[canonical] = opt if canonical == opt.name else opt._replace(name=canonical)
    return definition.build(by_name, rule_label, protocol)


def target_options(name: str) -> tuple[OptionDef, ...]:
    """The options target ``name`` accepts (none for chains and unknown names)."""
    definition = TARGETS.get(name)
    return definition.options if definition is not None else ()
