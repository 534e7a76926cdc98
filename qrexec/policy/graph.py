"""Graphviz DOT of who can call what (like upstream qrexec-policy-graph, spec 8)."""

from __future__ import annotations

from collections.abc import Sequence

from .engine import PolicySnapshot
from .request import Resolution
from .sysinfo import SystemInfo


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def policy_graph(snapshot: PolicySnapshot, sysinfo: SystemInfo, *,
                 include_ask: bool = False, sources: Sequence[str] | None = None,
                 targets: Sequence[str] | None = None,
                 services: Sequence[str] | None = None, skip_labels: bool = False,
                 full_output: bool = False) -> str:
    """Brute-force the policy into a DOT digraph.

    For every (service, argument) of the rules (plus ``services``, each
    ``SERVICE[+ARG]``), every source and every target in {all qubes,
    ``@dispvm``, ``@dispvm:T``, ``@default``}: allow gives a red edge, ask
    (with ``include_ask``) an orange one.  Service ``*`` rules are drawn
    with the label ``*`` (upstream prints ``None``).
    """
    pairs: set[tuple[str, str | None]] = set()
    for rule in snapshot.rules:
        pairs.add((rule.service or "*", rule.argument))
    for s in services or ():
        svc, plus, arg = s.partition("+")
        pairs.add((svc, "+" + arg if plus else None))
    ordered = sorted(pairs, key=lambda p: (p[0] if p[0] != "*" else "", p[1] or ""))
    names = list(sysinfo.names())
    srcs = list(sources) if sources else names
    tgts = names + ["@dispvm"] + ["@dispvm:" + t for t in sysinfo.dispvm_templates] + ["@default"]
    wanted_targets = set(targets) if targets else None

    lines: list[str] = ["digraph g {"]
    seen: set[str] = set()

    def emit(line: str) -> None:
        if line not in seen:
            seen.add(line)
            lines.append(line)

    def node(name: str) -> None:
        if name.startswith("@"):
            emit(f"  {_quote(name)} [style = dotted];")
            return
        info = sysinfo.get(name)
        label = info.label if info is not None else None
        if isinstance(label, str) and label.startswith("0x"):
            emit(f'  {_quote(name)} [color = "#{label[2:]}", penwidth = 3];')
        else:
            emit(f"  {_quote(name)} [penwidth = 3];")

    for service, argument in ordered:
        arg = argument[1:] if argument else ""
        for src in srcs:
            for tgt in tgts:
                res: Resolution = snapshot.evaluate(service, arg, src, tgt, sysinfo)
                if res.result == "deny" or (res.result == "ask" and not include_ask):
                    continue
                rule = None
                if res.rule is not None:
                    rule = next((r for r in snapshot.rules
                                 if (r.filepath, r.lineno) == res.rule), None)
                if res.result == "allow":
                    final = res.target or tgt
                    color = "red"
                else:
                    redirect = rule.action.target if rule is not None else None
                    final = str(redirect) if redirect is not None else tgt
                    color = "orange"
                if wanted_targets is not None and final not in wanted_targets:
                    continue
                if skip_labels:
                    label = ""
                elif full_output and rule is not None:
                    label = f"{service}{argument or ''} {rule.action}"
                else:
                    label = f"{service}{argument or ''}"
                node(src)
                node(final)
                emit(f"  {_quote(src)} -> {_quote(final)} [label={_quote(label)} "
                     f"color={color}];")
    lines.append("}")
    return "\n".join(lines) + "\n"

