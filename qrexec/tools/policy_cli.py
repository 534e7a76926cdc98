"""qrexec-policy: check, lint and graph the qrexec policy.

Exit status of ``check``: 0 if the call is allowed, 1 if denied or needs
confirmation (ask), 2 on a usage or input error.  ``lint``: 0 if the policy
loads, 1 otherwise.  Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from qrexec.policy import PolicySnapshot, SystemInfo, load_policy, split_service_arg
from qrexec.policy.graph import policy_graph


class CliError(Exception):
    """A one-line error for the user."""


def default_policy_dirs() -> list[Path]:
    run = Path(os.environ.get("QUBESD_RUN_DIR", "./var/run"))
    conf = Path(os.environ.get("QUBES_CONFIG_DIR", "./var/etc"))
    return [run / "policy.d", conf / "policy.d"]


def internal_socket() -> Path:
    env = os.environ.get("QUBESD_INTERNAL_SOCKET")
    return Path(env) if env else Path("./var/run/qubesd.internal.sock")


def fetch_system_info(sock_path: Path, timeout: float = 30.0) -> dict[str, Any]:
    """Ask qubesd for ``internal.GetSystemInfo`` (upstream's JSON)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(os.fspath(sock_path))
            s.sendall(b"internal.GetSystemInfo+ dom0 name dom0\0")
            s.shutdown(socket.SHUT_WR)
            chunks = []
            while True:
                data = s.recv(65536)
                if not data:
                    break
                chunks.append(data)
    except OSError as e:
        raise CliError(f"cannot get system info from qubesd at {sock_path}: "
                       f"{e.strerror or e} (use --system-info FILE)") from None
    reply = b"".join(chunks)
    if reply.startswith(b"0\0"):
        try:
            data = json.loads(reply[2:].decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise CliError(f"qubesd sent invalid system info: {e}") from None
        if not isinstance(data, dict):
            raise CliError("qubesd sent invalid system info: not a JSON object")
        return data
    if reply.startswith(b"2\0"):
        parts = reply[2:].split(b"\0")
        exc = parts[0].decode("utf-8", "replace") if parts else "?"
        msg = parts[2].decode("utf-8", "replace") if len(parts) > 2 else ""
        raise CliError(f"qubesd refused internal.GetSystemInfo: {exc}: {msg}")
    raise CliError("qubesd sent an unexpected reply to internal.GetSystemInfo")


def load_system_info(path: str | None) -> SystemInfo:
    if path is None:
        data = fetch_system_info(internal_socket())
    else:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except OSError as e:
            raise CliError(f"cannot read system info {path}: {e.strerror or e}") from None
        except ValueError as e:
            raise CliError(f"system info {path} is not valid JSON: {e}") from None
    try:
        return SystemInfo.from_json(data)
    except (TypeError, ValueError) as e:
        raise CliError(f"invalid system info: {e}") from None


def policy_dirs(args: argparse.Namespace) -> list[Path]:
    return [Path(p) for p in args.policy_dir] if args.policy_dir else default_policy_dirs()


def _human(res_dict: dict[str, Any]) -> str:
    r = res_dict
    parts = [r["result"]]
    if r["result"] == "allow":
        parts.append(f"target={r['target']}")
        if r["user"]:
            parts.append(f"user={r['user']}")
        parts.append(f"autostart={'yes' if r['autostart'] else 'no'}")
    elif r["result"] == "ask":
        parts.append("targets=" + ",".join(r["targets_for_ask"] or []))
        if r["default_target"]:
            parts.append(f"default_target={r['default_target']}")
    parts.append(f"notify={'yes' if r['notify'] else 'no'}")
    rule = r["rule"]
    where = f"{rule['file']}:{rule['line']}" if rule else "no rule"
    return f"{' '.join(parts)}  ({where}: {r['reason']})"


def _evaluate(snap: PolicySnapshot, sysinfo: SystemInfo, source: Any, target: Any,
              service_and_arg: Any) -> dict[str, Any]:
    if not isinstance(source, str) or not isinstance(target, str) or \
            not isinstance(service_and_arg, str):
        return {"result": "deny", "target": None, "targets_for_ask": None,
                "default_target": None, "user": None, "autostart": True, "notify": True,
                "rule": None, "reason": "invalid request: source, target and service must "
                "be strings"}
    service, arg = split_service_arg(service_and_arg)
    return snap.evaluate(service, arg, source, target, sysinfo).to_dict()


def cmd_check(args: argparse.Namespace) -> int:
    snap = load_policy(policy_dirs(args))
    sysinfo = load_system_info(args.system_info)
    if args.batch:
        if args.request:
            raise CliError("--batch reads requests from stdin; give no SOURCE TARGET SERVICE")
        for lineno, line in enumerate(sys.stdin, 1):
            if not line.strip():
                continue
            try:
                req = json.loads(line)
                if not isinstance(req, dict):
                    raise TypeError("not a JSON object")
                out = _evaluate(snap, sysinfo, req.get("source"), req.get("target", ""),
                                req.get("service"))
            except (TypeError, ValueError) as e:
                out = {"result": "deny", "target": None, "targets_for_ask": None,
                       "default_target": None, "user": None, "autostart": True,
                       "notify": True, "rule": None,
                       "reason": f"invalid request on line {lineno}: {e}"}
            sys.stdout.write(json.dumps(out) + "\n")
            sys.stdout.flush()
        return 0
    if len(args.request) != 3:
        raise CliError("expected SOURCE TARGET SERVICE[+ARG] (or --batch)")
    source, target, service_and_arg = args.request
    out = _evaluate(snap, sysinfo, source, target, service_and_arg)
    print(json.dumps(out) if args.json else _human(out))
    return 0 if out["result"] == "allow" else 1


def cmd_lint(args: argparse.Namespace) -> int:
    dirs = policy_dirs(args)
    snap = load_policy(dirs)
    for w in snap.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if snap.error is not None:
        print(snap.error)
        return 1
    if not args.quiet:
        print(f"OK: {len(snap.rules)} rules from {len(snap.files)} files "
              f"({', '.join(str(d) for d in dirs)})")
    return 0


def cmd_graph(args: argparse.Namespace) -> int:
    dirs = [Path(p) for p in args.policy_dir] if args.policy_dir else default_policy_dirs()[1:]
    snap = load_policy(dirs)
    if snap.error is not None:
        raise CliError(f"policy does not load: {snap.error}")
    sysinfo = load_system_info(args.system_info)
    text = policy_graph(snap, sysinfo, include_ask=args.include_ask, sources=args.source,
                        targets=args.target, services=args.service,
                        skip_labels=args.skip_labels, full_output=args.full_output)
    if args.output:
        try:
            Path(args.output).write_text(text)
        except OSError as e:
            raise CliError(f"cannot write {args.output}: {e.strerror or e}") from None
    else:
        sys.stdout.write(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qrexec-policy",
        description="Evaluate, validate and draw the qrexec policy "
                    "(policy.d files with !include directives, as in Qubes R4.x).",
        epilog="Policy directories default to $QUBESD_RUN_DIR/policy.d (runtime, shadows) "
               "and $QUBES_CONFIG_DIR/policy.d, i.e. ./var/run/policy.d and "
               "./var/etc/policy.d.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    pd_help = ("policy.d directory; may be repeated, earlier ones shadow later ones "
               "(default: ./var/run/policy.d and ./var/etc/policy.d)")
    si_help = ("JSON file shaped like internal.GetSystemInfo: {\"domains\": {name: {...}}} "
               "(default: ask qubesd on $QUBESD_INTERNAL_SOCKET, "
               "./var/run/qubesd.internal.sock)")

    c = sub.add_parser(
        "check", help="evaluate one call (or many with --batch)",
        description="Evaluate whether SOURCE may call SERVICE[+ARG] on TARGET. Exit status 0 if "
                    "allowed, 1 if denied or ask (needs a user), 2 on error.",
        epilog="--batch reads JSON lines {\"source\": ..., \"target\": ..., \"service\": "
               "\"svc[+arg]\"} and writes one JSON object per line with keys result, target, "
               "targets_for_ask, default_target, user, autostart, notify, rule ({file, line} "
               "or null), reason.")
    c.add_argument("--policy-dir", action="append", metavar="P", help=pd_help)
    c.add_argument("--system-info", metavar="F", help=si_help)
    c.add_argument("--json", action="store_true", help="print the result as one JSON object")
    c.add_argument("--batch", action="store_true", help="read JSON requests from stdin")
    c.add_argument("request", nargs="*", metavar="SOURCE TARGET SERVICE[+ARG]",
                   help="the call: source qube, intended target (name, @default, "
                        "@dispvm[:T], @adminvm), service with optional +argument")
    c.set_defaults(func=cmd_check)

    lint = sub.add_parser("lint", help="validate the policy; every error with file:line",
                          description="Load the policy as the engine would. Prints "
                                      "'file:line: reason' and exits 1 if it does not load.")
    lint.add_argument("--policy-dir", action="append", metavar="P", help=pd_help)
    lint.add_argument("-q", "--quiet", action="store_true", help="print nothing when valid")
    lint.set_defaults(func=cmd_lint)

    g = sub.add_parser("graph", help="Graphviz DOT of who can call what",
                       description="Brute-force the policy over all qubes and print a DOT "
                                   "digraph: red edges allow, orange edges ask.")
    g.add_argument("--policy-dir", action="append", metavar="P",
                   help="policy.d directory (default: ./var/etc/policy.d; runtime ignored)")
    g.add_argument("--system-info", metavar="F", help=si_help)
    g.add_argument("--include-ask", action="store_true", help="also draw ask edges")
    g.add_argument("--source", nargs="+", metavar="Q", help="only these sources")
    g.add_argument("--target", nargs="+", metavar="T", help="only edges to these targets")
    g.add_argument("--service", nargs="+", metavar="S", help="extra SERVICE[+ARG] to check")
    g.add_argument("--output", metavar="F", help="write to F instead of stdout")
    g.add_argument("--skip-labels", action="store_true", help="no edge labels")
    g.add_argument("--full-output", action="store_true",
                   help="label edges with the rule's action and parameters")
    g.set_defaults(func=cmd_graph)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.func(args)
    except CliError as e:
        print(f"qrexec-policy: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1
    except Exception as e:  # noqa: BLE001 -- never a traceback
        print(f"qrexec-policy: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
