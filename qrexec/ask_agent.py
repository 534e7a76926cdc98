"""The ask agent: answers the qrexec policy's ``ask`` for the users of one GUI domain.

``python -m qrexec.ask_agent [--run-dir R] [--guivm dom0] [--answer allow|deny [--target T]]``

It registers on ``R/qrexec/ask-agent.sock`` (``AGENT <guivm>``, framing in
`qrexec.transport`) and, for each request, shows the source, the requested target, the
service, the argument, the rule and the offered targets, and reads ``y/N`` (and a target when
several are offered) from the terminal. With ``--answer`` it answers every request without
asking (for tests and scripted setups): ``allow`` picks ``--target``, else the default target,
else the requested target when offered, else the only/first offered one.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

from qrexec import transport


def _pick(req: dict[str, Any], wanted: str | None) -> str | None:
    targets = [str(t) for t in req.get("targets") or []]
    for cand in (wanted, req.get("default_target"), req.get("target")):
        if cand and (cand in targets or wanted):
            return str(cand)
    return targets[0] if targets else None


def _prompt(req: dict[str, Any]) -> tuple[str, str | None]:
    targets = [str(t) for t in req.get("targets") or []]
    out = sys.stderr
    out.write(
        "\nqrexec call needs confirmation:\n"
        f"  source:   {req.get('source')}\n"
        f"  target:   {req.get('target')}\n"
        f"  service:  {req.get('service')}\n"
        f"  argument: {req.get('argument') or '-'}\n"
        f"  rule:     {req.get('rule')}\n"
        f"  targets:  {' '.join(targets) or '-'}"
        f" (default: {req.get('default_target') or '-'})\n"
    )
    out.write("Allow? [y/N] ")
    out.flush()
    answer = sys.stdin.readline().strip().lower()
    if answer not in ("y", "yes"):
        return "deny", None
    target = req.get("default_target") or (targets[0] if len(targets) == 1 else None)
    while target is None or target not in targets:
        out.write(f"Target ({' '.join(targets)}): ")
        out.flush()
        line = sys.stdin.readline()
        if not line:
            return "deny", None
        target = line.strip()
    return "allow", str(target)


def run(sock_path: Path, guivm: str, answer: str | None, wanted: str | None) -> int:
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(str(sock_path))
            break
        except OSError:
            s.close()
            time.sleep(0.1)
    s.sendall(f"AGENT {guivm}\n".encode("ascii"))
    f = s.makefile("rb")
    if f.readline() != b"OK\n":
        sys.stderr.write("ask agent: registration refused\n")
        return 1
    sys.stderr.write(f"ask agent ready for GUI domain {guivm}\n")
    sys.stderr.flush()
    for line in f:
        try:
            req = json.loads(line)
        except ValueError:
            continue
        if answer is None:
            verdict, target = _prompt(req)
        elif answer == "allow":
            verdict, target = "allow", _pick(req, wanted)
        else:
            verdict, target = "deny", None
        reply = {"id": req.get("id"), "answer": verdict, "target": target}
        s.sendall(json.dumps(reply).encode() + b"\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    from qubesd import paths

    parser = argparse.ArgumentParser(prog="qrexec-ask-agent", description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", type=Path, default=paths.run_dir())
    parser.add_argument("--guivm", default="dom0")
    parser.add_argument("--answer", choices=("allow", "deny"))
    parser.add_argument("--target")
    args = parser.parse_args(argv)
    sock = args.run_dir / "qrexec" / transport.ASK_AGENT_SOCKET
    try:
        return run(sock, args.guivm, args.answer, args.target)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
