"""qubes-policy: the security officer's client for the ``policy.*`` services.

Two ways to call it:

* upstream's flags, for the qrexec policy files (``policy.List/Get/Replace/Remove`` and
  ``policy.include.*``)::

      qubes-policy [-l]                     list the main policy files
      qubes-policy -l include/              list the include files (or: -l --include)
      qubes-policy -g [include/]NAME        print a file
      qubes-policy -r [include/]NAME [FILE] replace a file with FILE (or stdin)
      qubes-policy -d [include/]NAME        remove a file

  ``-r`` and ``-d`` first fetch the file's current token (``sha256:...``, or ``new`` when
  the file does not exist), so a file that changed in the meantime is never overwritten
  silently; ``--token`` overrides that (``any`` skips the check).

* subcommands for the multi-user layer: ``explain``, ``audit``, ``users``, ``sets``,
  ``overlap``, ``who-can``, ``can-i``, ``acl-get``, ``acl-replace``.

Calls go through the Admin API client library: straight to qubesd
(``$QUBESD_SOCKET``) in dom0, or through ``qrexec-client-vm`` when
``$QREXEC_VM_SOCKET`` is set (the officer's VM).  Every failure is one line on stderr,
``qubes-policy: error: <ExceptionClass>: <message>``, and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from qubesd import exc
from qubesd.client import (
    QubesDaemonCommunicationError,
    Transport,
    default_transport,
    error_message,
    parse_response,
)

PROG = "qubes-policy"

#: upstream's RPCNAME_ALLOWED_CHARSET (the daemon applies the stricter file name rule)
NAME_CHARSET = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+._-")

#: the gate's layers, in the order they are evaluated
LAYERS = ("qrexec", "casbin", "value")
LAYER_TITLES = {"qrexec": "qrexec policy", "casbin": "casbin (users)",
                "value": "value constraint"}

#: properties whose value names a domain (DESIGN section 4, value constraints)
VM_VALUED = frozenset(("netvm", "template", "default_dispvm", "guivm", "audiovm",
                       "management_dispvm"))

SUBCOMMANDS = ("explain", "audit", "users", "sets", "overlap", "who-can", "can-i",
               "acl-get", "acl-replace")

TRANSPORT_NOTE = """\
The daemon is reached at $QUBESD_SOCKET in dom0, or through qrexec-client-vm when
$QREXEC_VM_SOCKET is set (from the officer's VM; the qrexec policy must allow the
policy.* services there, and userdomains.yaml must mark the VM's user `officer: true`)."""

MAIN_DESCRIPTION = """\
Manage the qrexec policy files, the multi-user file userdomains.yaml, and inspect
the decisions of the gate (qrexec policy, then the users' grants, then value
constraints).

file commands (upstream qubes-policy):
  qubes-policy [-l]                       list policy files (policy.List)
  qubes-policy -l include/                list include files (policy.include.List)
  qubes-policy -g [include/]NAME          print a file (policy.Get)
  qubes-policy -r [include/]NAME [FILE]   replace a file with FILE or stdin
  qubes-policy -d [include/]NAME          remove a file

subcommands (see `qubes-policy SUBCOMMAND --help`):
  explain SOURCE TARGET METHOD[+ARG]      why a call would be allowed or denied
  audit [filters] [--limit N]             the gate's audit log
  users                                   users: VMs, grants, create_into
  sets                                    domain sets and their current members
  overlap                                 domains in more than one user's sets
  who-can DOMAIN                          who may do what to DOMAIN
  can-i --as VM                           what VM may do, and on which domains
  acl-get                                 print userdomains.yaml
  acl-replace [FILE]                      replace userdomains.yaml (validated first)"""

MAIN_EPILOG = f"""\
examples:
  qubes-policy -l
  qubes-policy -g 30-user > 30-user.policy
  $EDITOR 30-user.policy && qubes-policy -r 30-user 30-user.policy
  echo 'admin.vm.List * alice-admin @adminvm allow target=dom0' | qubes-policy -r 40-alice
  qubes-policy -g include/admin-policy-ro
  qubes-policy -d 40-alice
  qubes-policy explain alice-admin work admin.vm.Start
  qubes-policy audit --user alice --result deny --limit 20
  qubes-policy who-can dev
  qubes-policy can-i --as alice-admin

A replace or remove is refused when the file changed since its token was read
(PolicyAdminTokenException), and a change that does not validate is refused with the
file and line (PolicyAdminSyntaxException); nothing is changed in either case.

{TRANSPORT_NOTE}"""


class CliError(Exception):
    """A user-facing error raised by this tool (not by the daemon)."""

    def __init__(self, message: str, kind: str = "Error") -> None:
        super().__init__(message)
        self.kind = kind


# --------------------------------------------------------------------------------------
# talking to qubesd


class PolicyClient:
    """The ``policy.*`` calls, each to dom0, through the client library's transport."""

    def __init__(self, transport: Transport | None = None) -> None:
        self.transport = transport or default_transport()

    def call(self, method: str, arg: str | None = None, payload: bytes = b"") -> bytes:
        return parse_response(self.transport.call_raw("dom0", method, arg, payload))

    def text(self, method: str, arg: str | None = None, payload: bytes = b"") -> str:
        return self.call(method, arg, payload).decode("utf-8", "surrogateescape")

    def json(self, method: str, arg: str | None = None, payload: bytes = b"") -> Any:
        data = self.text(method, arg, payload)
        try:
            return json.loads(data)
        except ValueError as err:
            raise QubesDaemonCommunicationError(
                f"{method}: the daemon sent invalid JSON: {err}") from None

    def get_with_token(self, method: str, arg: str | None = None) -> tuple[str, bytes]:
        """``(token, content)`` of a ``*.Get`` reply ``sha256:<hex>\\n<content>``."""
        reply = self.call(method, arg)
        token, newline, content = reply.partition(b"\n")
        if not newline or not token.startswith(b"sha256:"):
            raise QubesDaemonCommunicationError(f"{method}: reply without a token line")
        return token.decode("ascii", "replace"), content

    def current_token(self, get_method: str, arg: str | None = None) -> str:
        """The token to replace or remove with: the file's hash, or ``new``."""
        try:
            token, _content = self.get_with_token(get_method, arg)
        except exc.QubesException as err:
            if wire_type(err) == "PolicyAdminFileNotFoundException":
                return "new"
            raise
        return token


def wire_type(err: BaseException) -> str:
    """The exception class name as the daemon sent it (or the local class)."""
    return getattr(err, "wire_type", None) or type(err).__name__


# --------------------------------------------------------------------------------------
# output helpers


def write(text: str) -> None:
    sys.stdout.write(text)


def write_bytes(data: bytes) -> None:
    """Write file content exactly (with a final newline added only if it lacks one)."""
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    if data and not data.endswith(b"\n"):
        sys.stdout.buffer.write(b"\n")
    sys.stdout.buffer.flush()


def print_json(data: Any) -> None:
    write(json.dumps(data, indent=2, sort_keys=True, default=list) + "\n")


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces; the last column is not padded."""
    all_rows = [list(header), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(header))]
    lines = []
    for row in all_rows:
        cells = [c.ljust(widths[i]) if i < len(row) - 1 else c for i, c in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def joined(items: Sequence[str] | None, empty: str = "-") -> str:
    return ", ".join(items) if items else empty


def read_input(path: str | None) -> bytes:
    if path is None or path == "-":
        return sys.stdin.buffer.read()
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise CliError(f"cannot read {path}: {err.strerror or err}",
                       type(err).__name__) from None


# --------------------------------------------------------------------------------------
# upstream's file commands


def file_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        usage=f"{PROG} {{[-l]|-g|-r|-d}} [--include] [--token TOKEN] "
              "[include/][NAME] [FILE]\n"
              f"       {PROG} SUBCOMMAND ...",
        description=MAIN_DESCRIPTION, epilog=MAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-l", "--list", dest="method", action="store_const", const="list",
                       help="list the policy files (the default)")
    group.add_argument("-g", "--get", dest="method", action="store_const", const="get",
                       help="print the content of the policy file NAME")
    group.add_argument("-r", "--replace", dest="method", action="store_const",
                       const="replace",
                       help="replace (or create) NAME with FILE, or standard input")
    group.add_argument("-d", "--remove", dest="method", action="store_const",
                       const="remove", help="remove the policy file NAME")
    parser.add_argument("--include", action="store_true",
                        help="operate on include files (same as an include/ prefix)")
    parser.add_argument("--token", metavar="TOKEN",
                        help="with -r/-d: the token to send instead of the file's current "
                             "one: sha256:<hex>, new (file must not exist) or any (no "
                             "check)")
    parser.add_argument("name", metavar="[include/]NAME", nargs="?", default="",
                        help="policy file name, without .policy; with include/, a file "
                             "of the include directory")
    parser.add_argument("file", metavar="FILE", nargs="?",
                        help="with -r: read the new content from FILE (default: stdin)")
    parser.set_defaults(method="list")
    return parser


def run_file_command(argv: Sequence[str]) -> Callable[[PolicyClient], None]:
    parser = file_parser()
    args = parser.parse_args(argv)
    name: str = args.name
    include = args.include
    if name == "include" or name.startswith("include/"):
        name = name[len("include/"):]
        include = True
    invalid = set(name) - NAME_CHARSET
    if invalid:
        parser.error(f"invalid character(s) in NAME: {''.join(sorted(invalid))!r}")
    if args.method == "list" and name:
        parser.error("--list doesn't work with a file name (did you mean -g NAME?)")
    if args.method != "list" and not name:
        parser.error("you need to provide a file name")
    if args.file is not None and args.method != "replace":
        parser.error("FILE is only used with -r/--replace")
    if args.token is not None and args.method not in ("replace", "remove"):
        parser.error("--token is only used with -r/--replace and -d/--remove")
    prefix = "policy.include." if include else "policy."

    def body(client: PolicyClient) -> None:
        if args.method == "list":
            write(client.text(prefix + "List"))
        elif args.method == "get":
            _token, content = client.get_with_token(prefix + "Get", name)
            write_bytes(content)
        elif args.method == "replace":
            content = read_input(args.file)
            token = args.token or client.current_token(prefix + "Get", name)
            client.call(prefix + "Replace", name, token.encode("ascii") + b"\n" + content)
        else:
            token = args.token or client.current_token(prefix + "Get", name)
            client.call(prefix + "Remove", name, token.encode("ascii"))

    return body


# --------------------------------------------------------------------------------------
# subcommands


def sub_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=MAIN_DESCRIPTION, epilog=MAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    subs = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")
    fmt = argparse.RawDescriptionHelpFormatter

    def add(name: str, help_text: str, example: str) -> argparse.ArgumentParser:
        p = subs.add_parser(name, help=help_text, description=help_text,
                            epilog=f"example:\n  {example}\n\n{TRANSPORT_NOTE}",
                            formatter_class=fmt)
        p.add_argument("--json", action="store_true",
                       help="print the daemon's JSON reply instead of the text form")
        return p

    p = add("explain", "Explain how the gate decides a call (policy.Explain): the qrexec "
                       "policy verdict and rule, the users' grants (Casbin rows), the value "
                       "constraint, and the result. Nothing is executed.",
            "qubes-policy explain alice-admin work admin.vm.property.Set+netvm bob-work")
    p.add_argument("source", metavar="SOURCE", help="calling VM, e.g. alice-admin")
    p.add_argument("target", metavar="TARGET", help="destination domain (dom0 or @adminvm "
                                                    "for global calls)")
    p.add_argument("service", metavar="METHOD[+ARG]", help="e.g. admin.vm.Start or "
                                                          "admin.vm.property.Get+netvm")
    p.add_argument("value", metavar="VALUE", nargs="?", default=None,
                   help="the payload of the call when it matters to the value constraint, "
                        "e.g. the new netvm of property.Set+netvm")

    p = add("audit", "Show the gate's audit log (policy.Audit), oldest first: every call "
                     "from a VM, with its verdict and the deciding reason.",
            "qubes-policy audit --user alice --result deny --limit 20")
    p.add_argument("--user", help="only calls made for this user")
    p.add_argument("--domain", help="only calls whose source or destination is DOMAIN")
    p.add_argument("--source", metavar="VM", help="only calls from this VM")
    p.add_argument("--method", metavar="M", help="only this method, e.g. admin.vm.Start")
    p.add_argument("--result", choices=("allow", "deny"), help="only this verdict")
    p.add_argument("--since", metavar="TIME",
                   help="only records at or after this ISO time, e.g. 2025-01-31T12:00")
    p.add_argument("--limit", metavar="N", type=int, help="only the last N matches")

    add("users", "List the users of userdomains.yaml: their management and GUI VMs, "
                 "grants, and the set their new domains join.", "qubes-policy users")
    add("sets", "List the domain sets with their current members and the users granted "
                "on them.", "qubes-policy sets")
    add("overlap", "List the domains that more than one user can reach (through allow "
                   "grants).", "qubes-policy overlap")

    p = add("who-can", "List who may do what to a domain (policy.acl.WhoCan): user, VM, "
                       "role, allow/deny and the sets it comes through.",
            "qubes-policy who-can dev")
    p.add_argument("domain", metavar="DOMAIN")

    p = add("can-i", "Show what a VM may do (policy.acl.CanI): its user, kind, grants and "
                     "the domains it can see through both layers.",
            "qubes-policy can-i --as alice-admin")
    p.add_argument("--as", dest="vm", metavar="VM", required=True,
                   help="the VM to ask about")

    add("acl-get", "Print userdomains.yaml (policy.acl.Get).",
        "qubes-policy acl-get > userdomains.yaml")
    p = add("acl-replace", "Replace userdomains.yaml (policy.acl.Replace) with FILE or "
                           "stdin. The file is validated as a whole new snapshot first; a "
                           "refused file leaves the running one in place.",
            "qubes-policy acl-replace userdomains.yaml")
    p.add_argument("file", metavar="FILE", nargs="?", help="new content (default: stdin)")
    p.add_argument("--token", metavar="TOKEN",
                   help="token to send instead of the current file's: sha256:<hex>, new "
                        "or any")
    return parser


def run_subcommand(argv: Sequence[str]) -> Callable[[PolicyClient], None]:
    parser = sub_parser()
    args = parser.parse_args(argv)
    if args.command == "audit":
        for key in ("user", "domain", "source", "method", "since"):
            value = getattr(args, key)
            if value is not None and (not value or not value.isascii()
                                      or any(c.isspace() for c in value)):
                parser.error(f"--{key} must be non-empty ASCII without spaces")
        if args.limit is not None and args.limit < 0:
            parser.error("--limit must not be negative")
    return lambda client: COMMANDS[args.command](client, args)


def cmd_explain(client: PolicyClient, args: argparse.Namespace) -> None:
    payload = f"{args.source} {args.target} {args.service}"
    if not payload.isascii() or len(payload.split()) != 3:
        raise CliError("SOURCE, TARGET and METHOD[+ARG] must be ASCII words")
    if args.value is not None:
        if not args.value.isascii() or " " in args.value:
            raise CliError("VALUE must be one ASCII word")
        payload += f" {args.value}"
    data = client.json("policy.Explain", None, payload.encode("ascii"))
    if args.json:
        print_json(data)
        return
    write(format_explain(data))


def format_explain(data: dict[str, Any]) -> str:
    service = data.get("method", "?")
    if data.get("argument"):
        service += "+" + data["argument"]
    lines = [f"{data.get('source')} -> {data.get('target')}: {service}"]
    if data.get("user"):
        lines[0] += f"  (acting for user {data['user']})"
    layers = data.get("layers") or {}
    if not layers and data.get("source") == "dom0":
        lines.append("  dom0 is trusted: it bypasses every layer")
    stopped = False
    for layer in LAYERS:
        info = layers.get(layer)
        title = f"  {LAYER_TITLES[layer] + ':':<18}"
        if info is None:
            if stopped:
                lines.append(f"{title}not evaluated (an earlier layer denied)")
            elif layer == "value" and layers:
                lines.append(f"{title}not applicable (the call names no other domain)")
            elif layers:
                lines.append(f"{title}not evaluated")
            continue
        verdict = info.get("result") or ("allow" if info.get("allowed") else "deny")
        if layer == "qrexec":
            where = info.get("rule") or "no matching rule"
            lines.append(f"{title}{verdict.upper()} at {where}")
        else:
            lines.append(f"{title}{verdict.upper()}")
        if info.get("reason"):
            lines.append(f"{'':20}{info['reason']}")
        for row in info.get("rows") or ():
            if row != info.get("reason"):
                lines.append(f"{'':20}row: {row}")
        if verdict != "allow":
            stopped = True
    lines.append(f"  {'result:':<18}{str(data.get('result', '?')).upper()}"
                 f" - {data.get('reason', '')}")
    if data.get("snapshot"):
        lines.append(f"  {'policy snapshot:':<18}{data['snapshot']}")
    if (str(data.get("method", "")).endswith("property.Set")
            and data.get("argument") in VM_VALUED and not data.get("value")):
        lines.append("  note: no VALUE given; a real call is also refused when the domain "
                     "it names is not usable by the caller (add it as the 4th argument)")
    return "\n".join(lines) + "\n"


def audit_reason(rec: dict[str, Any]) -> str:
    """The deciding reason: the last layer evaluated (the one that denied, for a deny)."""
    reasons = rec.get("reasons") or {}
    if not isinstance(reasons, dict):
        return str(reasons)
    present = [layer for layer in LAYERS if layer in reasons]
    present += [layer for layer in reasons if layer not in LAYERS]
    if not present:
        return ""
    if rec.get("result") == "allow":
        layer = present[0]
    else:
        layer = present[-1]
    return f"{layer}: {reasons[layer]}"


def cmd_audit(client: PolicyClient, args: argparse.Namespace) -> None:
    filters = [f"{key}={getattr(args, key)}"
               for key in ("user", "domain", "source", "method", "result", "since", "limit")
               if getattr(args, key) is not None]
    text = client.text("policy.Audit", None, " ".join(filters).encode("ascii"))
    records = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            raise QubesDaemonCommunicationError(
                "policy.Audit: the daemon sent an invalid record") from None
    if args.json:
        for rec in records:
            write(json.dumps(rec, sort_keys=True) + "\n")
        return
    if not records:
        write("no matching audit records\n")
        return
    rows = []
    for rec in records:
        method = str(rec.get("method", ""))
        if rec.get("argument"):
            method += "+" + str(rec["argument"])
        when = str(rec.get("time", ""))
        rows.append([when[:19].replace("T", " "), str(rec.get("source", "")),
                     str(rec.get("user") or "-"), method, str(rec.get("destination", "")),
                     str(rec.get("result", "")), audit_reason(rec)])
    write(table(("TIME", "SOURCE", "USER", "METHOD", "TARGET", "RESULT", "REASON"), rows))


def grant_text(grant: dict[str, Any]) -> str:
    prefix = "deny " if grant.get("effect") == "deny" else ""
    return f"{prefix}{grant.get('role')} on {joined(grant.get('sets'))}"


def cmd_users(client: PolicyClient, args: argparse.Namespace) -> None:
    data = client.json("policy.acl.Report")
    if args.json:
        print_json(data.get("users", {}))
        return
    rows = []
    for name, user in sorted(data.get("users", {}).items()):
        rows.append([name + (" (officer)" if user.get("officer") else ""),
                     joined(user.get("management")), joined(user.get("gui")),
                     user.get("create_into") or "-",
                     "; ".join(grant_text(g) for g in user.get("grants", [])) or "-"])
    write(table(("USER", "MANAGEMENT", "GUI", "CREATE_INTO", "GRANTS"), rows))


def cmd_sets(client: PolicyClient, args: argparse.Namespace) -> None:
    data = client.json("policy.acl.Report")
    if args.json:
        print_json(data.get("sets", {}))
        return
    granted: dict[str, list[str]] = {}
    for uname, user in sorted(data.get("users", {}).items()):
        for g in user.get("grants", []):
            for s in g.get("sets", []):
                mark = f"{uname}({'deny ' if g.get('effect') == 'deny' else ''}{g.get('role')})"
                granted.setdefault(s, []).append(mark)
    rows = [[name, joined(members), joined(granted.get(name))]
            for name, members in sorted(data.get("sets", {}).items())]
    write(table(("SET", "MEMBERS", "GRANTED TO"), rows))


def cmd_overlap(client: PolicyClient, args: argparse.Namespace) -> None:
    data = client.json("policy.acl.Report")
    overlap = data.get("overlap", [])
    if args.json:
        print_json(overlap)
        return
    if not overlap:
        write("no domain is reachable by more than one user\n")
        return
    rows = [[o.get("domain", ""), joined(o.get("users")), joined(o.get("sets"))]
            for o in overlap]
    write(table(("DOMAIN", "USERS", "SETS"), rows))


def cmd_who_can(client: PolicyClient, args: argparse.Namespace) -> None:
    rows_in = client.json("policy.acl.WhoCan", args.domain)
    if args.json:
        print_json(rows_in)
        return
    if not rows_in:
        write(f"no user's grants reach {args.domain}\n")
        return
    rows = [[r.get("user", ""), r.get("vm", ""), r.get("role", ""), r.get("effect", ""),
             joined(r.get("via")), ", ".join(r.get("methods") or ())] for r in rows_in]
    write(table(("USER", "VM", "ROLE", "EFFECT", "VIA", "METHODS"), rows))


def cmd_can_i(client: PolicyClient, args: argparse.Namespace) -> None:
    data = client.json("policy.acl.CanI", args.vm)
    if args.json:
        print_json(data)
        return
    lines = [f"{data.get('vm', args.vm)}: {data.get('summary', '')}"]
    if data.get("user"):
        lines.append(f"  user:          {data['user']} ({data.get('kind')})")
        lines.append(f"  officer:       {'yes (policy.*)' if data.get('officer') else 'no'}")
        if data.get("create_into"):
            lines.append(f"  creates into:  {data['create_into']}")
    grants = data.get("grants") or []
    if grants:
        lines.append("  grants:")
        for g in grants:
            where = joined(g.get("sets")) if g.get("sets") else g.get("domains", "-")
            line = f" (line {g['line']})" if g.get("line") else ""
            lines.append(f"    {g.get('effect', 'allow'):<6}{g.get('role')} on {where}{line}")
            lines.append(f"          methods: {', '.join(g.get('methods') or ()) or '-'}")
    visible = data.get("visible_domains")
    if visible is not None:
        lines.append(f"  can see:       {joined(visible, '(none)')}")
    write("\n".join(lines) + "\n")


def cmd_acl_get(client: PolicyClient, args: argparse.Namespace) -> None:
    token, content = client.get_with_token("policy.acl.Get")
    if args.json:
        print_json({"token": token, "content": content.decode("utf-8", "surrogateescape")})
        return
    write_bytes(content)


def cmd_acl_replace(client: PolicyClient, args: argparse.Namespace) -> None:
    content = read_input(args.file)
    token = args.token or client.current_token("policy.acl.Get")
    client.call("policy.acl.Replace", None, token.encode("ascii") + b"\n" + content)
    if args.json:
        print_json({"replaced": True})


COMMANDS: dict[str, Callable[[PolicyClient, argparse.Namespace], None]] = {
    "explain": cmd_explain, "audit": cmd_audit, "users": cmd_users, "sets": cmd_sets,
    "overlap": cmd_overlap, "who-can": cmd_who_can, "can-i": cmd_can_i,
    "acl-get": cmd_acl_get, "acl-replace": cmd_acl_replace,
}


# --------------------------------------------------------------------------------------
# entry point


def fail(err_class: str, message: str) -> NoReturn:
    text = " ".join(message.split()) or "unknown error"
    print(f"{PROG}: error: {err_class}: {text}", file=sys.stderr)
    raise SystemExit(1)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        body = run_subcommand(argv)
    elif argv and argv[0] in ("help", "-h", "--help"):
        file_parser().print_help()
        return 0
    else:
        body = run_file_command(argv)
    try:
        body(PolicyClient())
    except CliError as err:
        fail(err.kind, str(err))
    except (exc.QubesException, exc.ProtocolError, exc.PermissionDenied) as err:
        fail(wire_type(err), error_message(err))
    except BrokenPipeError:
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except OSError as err:
        fail(type(err).__name__, str(err))
    return 0


if __name__ == "__main__":
    sys.exit(main())
