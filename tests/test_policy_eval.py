"""qrexec policy: matching, normalisation, actions, ask targets, resolutions (spec 2.3-3.5)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from qrexec.policy import AccessDenied, PolicyWatcher, Request, SystemInfo, load_policy

DOM0_UUID = "00000000-0000-0000-0000-000000000000"
DOMAINS = {
    "dom0": {"tags": ["dom0-tag"], "type": "AdminVM", "power_state": "Running",
             "uuid": DOM0_UUID, "template_for_dispvms": False, "default_dispvm": None},
    "work": {"tags": ["t1", "both"], "type": "AppVM", "power_state": "Running",
             "uuid": "u-work", "default_dispvm": "dvm", "template_for_dispvms": False},
    "other": {"tags": ["both"], "type": "AppVM", "power_state": "Halted", "uuid": "u-other",
              "default_dispvm": None, "template_for_dispvms": False},
    "dvm": {"tags": ["dt"], "type": "AppVM", "power_state": "Halted", "uuid": "u-dvm",
            "template_for_dispvms": True, "default_dispvm": "dvm"},
    "dvm2": {"tags": [], "type": "AppVM", "power_state": "Halted", "uuid": "u-dvm2",
             "template_for_dispvms": True, "default_dispvm": None},
    "tpl": {"tags": [], "type": "TemplateVM", "power_state": "Halted", "uuid": "u-tpl",
            "template_for_dispvms": False, "default_dispvm": None},
    "hidden": {"tags": [], "type": "AppVM", "power_state": "Running", "uuid": "u-hidden",
               "internal": True, "template_for_dispvms": False, "default_dispvm": None},
    "remote": {"tags": [], "type": "RemoteVM", "power_state": "Running", "uuid": "u-remote",
               "relayvm": "work", "transport_rpc": "qubesair.SSHProxy",
               "template_for_dispvms": False, "default_dispvm": None},
}
SI = SystemInfo.from_json({"domains": DOMAINS})


def snap_of(tmp_path: Path, text: str):
    d = tmp_path / "policy.d"
    d.mkdir(exist_ok=True)
    (d / "30-test.policy").write_text(text)
    s = load_policy([d])
    assert s.error is None, s.error
    return s


def ev(snap, svc, src, tgt, arg=""):
    return snap.evaluate(svc, arg, src, tgt, SI)


# --- matching of each token against request values (spec 2.3) ------------------------

# (rule target token, request target, matches?)
TARGET_MATCH = [
    ("other", "other", True), ("other", "uuid:u-other", True), ("uuid:u-other", "other", True),
    ("other", "tpl", False),
    ("dom0", "dom0", True), ("dom0", "@adminvm", True), ("dom0", f"uuid:{DOM0_UUID}", True),
    ("@adminvm", "dom0", True), ("@adminvm", f"uuid:{DOM0_UUID}", True),
    (f"uuid:{DOM0_UUID}", "@adminvm", True), ("@adminvm", "other", False),
    ("*", "dom0", True), ("*", "@adminvm", True), ("*", "@default", True),
    ("*", "@dispvm", True), ("*", "@dispvm:dvm", True), ("*", "other", True),
    ("@anyvm", "other", True), ("@anyvm", "@default", True), ("@anyvm", "@dispvm", True),
    ("@anyvm", "@dispvm:dvm", True), ("@anyvm", "nosuch", True),
    ("@anyvm", "dom0", False), ("@anyvm", "@adminvm", False),
    ("@anyvm", f"uuid:{DOM0_UUID}", False),
    ("@default", "@default", True), ("@default", "nosuch", True), ("@default", "", True),
    ("@default", "other", False),
    ("@tag:both", "other", True), ("@tag:both", "uuid:u-other", True),
    ("@tag:both", "tpl", False), ("@tag:dom0-tag", "dom0", True),
    ("@tag:dom0-tag", "@adminvm", False), ("@tag:both", "@default", False),
    ("@type:TemplateVM", "tpl", True), ("@type:TemplateVM", "other", False),
    ("@type:AdminVM", "dom0", True), ("@type:AdminVM", "@adminvm", False),
    ("@dispvm", "@dispvm", True), ("@dispvm", "@dispvm:dvm", False),
    ("@dispvm:dvm", "@dispvm:dvm", True), ("@dispvm:dvm", "@dispvm:uuid:u-dvm", True),
    ("@dispvm:uuid:u-dvm", "@dispvm:dvm", True), ("@dispvm:dvm", "@dispvm:dvm2", False),
    ("@dispvm:dvm", "@dispvm", True),  # work's default_dispvm is dvm
    ("@dispvm:dvm2", "@dispvm", False), ("@dispvm:dvm", "dvm", False),
    ("@dispvm:@tag:dt", "@dispvm", True), ("@dispvm:@tag:dt", "@dispvm:dvm", True),
    ("@dispvm:@tag:dt", "@dispvm:dvm2", False), ("@dispvm:@tag:dt", "dvm", False),
]


@pytest.mark.parametrize("token,value,expected", TARGET_MATCH)
def test_target_match(tmp_path, token, value, expected):
    snap = snap_of(tmp_path, f"svc * work {token} allow target=dom0\n")
    res = ev(snap, "svc", "work", value)
    assert (res.result == "allow") is expected, res.reason
    req = Request("svc", "+", "work", value, SI)
    assert (snap.find_rule_linear(req) is not None) is expected


# (rule source token, request source, matches?)
SOURCE_MATCH = [
    ("work", "work", True), ("uuid:u-work", "work", True), ("work", "uuid:u-work", True),
    ("other", "work", False), ("*", "work", True), ("*", "dom0", True),
    ("@anyvm", "work", True), ("@anyvm", "dom0", False), ("@anyvm", "unknown-vm", True),
    ("@adminvm", "dom0", True), ("dom0", "dom0", True), ("@adminvm", "work", False),
    ("@tag:t1", "work", True), ("@tag:t1", "other", False), ("@tag:dom0-tag", "dom0", True),
    ("@type:AppVM", "work", True), ("@type:AppVM", "tpl", False),
    ("@dispvm:dvm", "work", False), ("@dispvm:@tag:dt", "work", False),
    ("unknown-vm", "unknown-vm", True),
]


@pytest.mark.parametrize("token,value,expected", SOURCE_MATCH)
def test_source_match(tmp_path, token, value, expected):
    snap = snap_of(tmp_path, f"svc * {token} @anyvm allow target=dom0\n"
                             f"svc * {token} @adminvm allow target=dom0\n")
    res = ev(snap, "svc", value, "other")
    assert (res.result == "allow") is expected, res.reason


@pytest.mark.parametrize("rule_svc,rule_arg,svc,arg,expected", [
    ("svc", "*", "svc", "", True), ("svc", "*", "svc", "x", True),
    ("svc", "+", "svc", "", True), ("svc", "+", "svc", "x", False),
    ("svc", "+x", "svc", "x", True), ("svc", "+x", "svc", "X", False),
    ("svc", "+x", "svc", "", False), ("svc", "+a+b", "svc", "a+b", True),
    ("*", "*", "anything", "y", True), ("svc", "*", "Svc", "", False),
    ("svc", "*", "svc2", "", False),
])
def test_service_and_argument(tmp_path, rule_svc, rule_arg, svc, arg, expected):
    snap = snap_of(tmp_path, f"{rule_svc} {rule_arg} work other allow\n")
    assert (ev(snap, svc, "work", "other", arg).result == "allow") is expected


# --- request normalisation (spec 3.2) ------------------------------------------------

@pytest.mark.parametrize("target,result,reason", [
    ("@anyvm", "deny", "invalid intendedtarget token: '@anyvm'"),
    ("*", "deny", "invalid intendedtarget token: '*'"),
    ("@tag:t1", "deny", "invalid intendedtarget token: '@tag:t1'"),
    ("@type:AppVM", "deny", "invalid intendedtarget token: '@type:AppVM'"),
    ("@dispvm:@tag:dt", "deny", "invalid intendedtarget token: '@dispvm:@tag:dt'"),
    ("@bogus", "deny", "invalid intendedtarget token: '@bogus'"),
    ("@dispvm:other", "deny", "not a template for dispvm: other"),
    ("@dispvm:nosuch", "deny", "not a template for dispvm: nosuch"),
])
def test_intended_target_refused(tmp_path, target, result, reason):
    snap = snap_of(tmp_path, "* * @anyvm * allow target=dom0\n")
    res = ev(snap, "svc", "work", target)
    assert (res.result, res.reason) == (result, reason)


def test_unknown_target_becomes_default(tmp_path):
    snap = snap_of(tmp_path, "svc * work @default allow target=other\nsvc * work nosuch deny\n")
    res = ev(snap, "svc", "work", "nosuch")
    assert (res.result, res.target, res.rule[1]) == ("allow", "other", 1)
    assert res.to_dict()["rule"] == {"file": str(tmp_path / "policy.d/30-test.policy"),
                                     "line": 1}


def test_requested_source_relay(tmp_path):
    snap = snap_of(tmp_path, "svc * remote other allow\nsvc * work other deny\n")
    assert snap.evaluate("svc", "", "work", "other", SI,
                         requested_source="remote").result == "allow"
    res = snap.evaluate("svc", "", "other", "other", SI, requested_source="remote")
    assert res.result == "deny" and "not a relay" in res.reason
    res = snap.evaluate("svc", "", "work", "other", SI, requested_source="tpl")
    assert "only authorized for RemoteVM" in res.reason
    res = snap.evaluate("svc", "", "work", "other", SI, requested_source="nosuch")
    assert "unknown requested source qube 'nosuch'" == res.reason


# --- evaluation: first match, redirects, @default (spec 3.3) ----------------------------

def test_first_match_and_redirect_not_rechecked(tmp_path):
    snap = snap_of(tmp_path, "* * work other allow target=tpl\n* * work tpl deny\n")
    res = ev(snap, "x", "work", "other")
    assert (res.result, res.target) == ("allow", "tpl")
    assert ev(snap, "x", "work", "tpl").result == "deny"


def test_default_allow_needs_target(tmp_path):
    snap = snap_of(tmp_path, "svc * work @anyvm allow\n")
    res = ev(snap, "svc", "work", "")
    assert res.result == "deny"
    assert "no target is specified by caller or policy" in res.reason
    assert ev(snap, "svc", "work", "other").result == "allow"


def test_deny_reason_and_notify(tmp_path):
    snap = snap_of(tmp_path, "svc * work other deny\nsvc * work tpl deny notify=no\n")
    res = ev(snap, "svc", "work", "other")
    path = tmp_path / "policy.d/30-test.policy"
    assert (res.result, res.reason, res.notify) == ("deny", f"denied by policy {path}:1", True)
    assert ev(snap, "svc", "work", "tpl").notify is False


@pytest.mark.parametrize("line,target,result,expected", [
    ("svc * work @dispvm allow", "@dispvm", "allow", "@dispvm:dvm"),
    ("svc * other @dispvm allow", "@dispvm", "deny", None),
    ("svc * work other allow target=@dispvm", "other", "allow", "@dispvm:dvm"),
    ("svc * work other allow target=@adminvm", "other", "allow", "dom0"),
    ("svc * work other allow target=uuid:00000000-0000-0000-0000-000000000000", "other",
     "allow", "dom0"),
    ("svc * work other allow target=uuid:u-tpl", "other", "allow", "tpl"),
    ("svc * work other allow target=nosuch", "other", "deny", None),
    ("svc * work other allow target=@dispvm:other", "other", "deny", None),
    ("svc * work other allow target=@dispvm:uuid:u-dvm", "other", "allow", "@dispvm:dvm"),
    ("svc * work @adminvm allow", "@adminvm", "allow", "dom0"),
    ("svc * work uuid:u-other allow", "uuid:u-other", "allow", "other"),
    # autostart=no: running qubes and dom0 only, never a new disposable
    ("svc * work @anyvm allow autostart=no", "other", "deny", None),
    ("svc * work @anyvm allow autostart=no", "hidden", "allow", "hidden"),
    ("svc * work dom0 allow autostart=no", "dom0", "allow", "dom0"),
    ("svc * work @dispvm allow autostart=no", "@dispvm", "deny", None),
])
def test_allow_targets(tmp_path, line, target, result, expected):
    snap = snap_of(tmp_path, line + "\n")
    res = ev(snap, "svc", "work" if " work " in line else "other", target)
    assert res.result == result, res.reason
    assert res.target == expected


def test_allow_params(tmp_path):
    snap = snap_of(tmp_path, "svc * work other allow user=root notify=yes autostart=no\n"
                             "svc * work tpl allow\n")
    res = ev(snap, "svc", "work", "other")
    assert res.result == "deny" and "would require autostart" in res.reason
    assert res.notify is True
    res = ev(snap, "svc", "work", "tpl")
    assert (res.user, res.autostart, res.notify) == (None, True, False)
    snap = snap_of(tmp_path, "svc * work other allow user=root notify=yes\n")
    res = ev(snap, "svc", "work", "other")
    assert (res.result, res.user, res.notify) == ("allow", "root", True)


# --- ask (spec 3.3) --------------------------------------------------------------------

def test_ask_collects_targets(tmp_path):
    snap = snap_of(tmp_path, "svc * work @default ask\nsvc * work @anyvm allow\n")
    res = ev(snap, "svc", "work", "")
    assert res.result == "ask"
    # @anyvm: all but dom0; source, internal dropped; @dispvm expanded
    assert res.targets_for_ask == sorted(["other", "dvm", "dvm2", "tpl", "remote",
                                          "@dispvm:dvm", "@dispvm:dvm2"])
    assert res.default_target is None


def test_ask_deny_above_removes_targets(tmp_path):
    snap = snap_of(tmp_path, "svc * work tpl deny\nsvc * work @default ask\n"
                             "svc * work @tag:both allow\nsvc * work @adminvm allow\n"
                             "svc * work * deny\nsvc * work @tag:t1 allow\n")
    res = ev(snap, "svc", "work", "")
    # the bottom "* deny" removes nothing added below it... and is below the allows
    assert res.targets_for_ask == ["dom0", "other"]


def test_ask_redirects_and_types(tmp_path):
    snap = snap_of(tmp_path, "svc * work @default ask\nsvc * work @type:TemplateVM allow\n"
                             "svc * work x allow target=dvm2\nsvc * work @dispvm:@tag:dt ask\n")
    assert ev(snap, "svc", "work", "").targets_for_ask == ["@dispvm:dvm", "dvm2", "tpl"]


def test_ask_target_and_default_target(tmp_path):
    snap = snap_of(tmp_path,
                   "svc * work other ask target=@adminvm\n"
                   "svc * work tpl ask default_target=other\n"
                   "svc * work dvm ask default_target=nosuch\n"
                   "svc * work dvm2 ask default_target=@dispvm\n"
                   "svc * work @anyvm ask\n")
    res = ev(snap, "svc", "work", "other")
    assert (res.result, res.targets_for_ask, res.default_target) == ("ask", ["dom0"], None)
    res = ev(snap, "svc", "work", "tpl")
    assert res.default_target == "other" and "other" in res.targets_for_ask
    assert ev(snap, "svc", "work", "dvm").default_target is None
    assert ev(snap, "svc", "work", "dvm2").default_target == "@dispvm:dvm"


def test_ask_autostart_no_and_empty(tmp_path):
    snap = snap_of(tmp_path, "svc * work @default ask autostart=no\nsvc * work @anyvm allow\n"
                             "svc * other tpl ask autostart=no\n")
    res = ev(snap, "svc", "work", "")
    assert res.targets_for_ask == ["remote"]  # the running ones (hidden is internal)
    res = ev(snap, "svc", "other", "tpl")
    assert res.result == "deny" and "no target is available to choose from" in res.reason


def test_ask_quirks_fail_closed(tmp_path):
    # upstream crashes with KeyError here (spec 3.4a)
    snap = snap_of(tmp_path, "* * work @anyvm ask\n* * work @dispvm:nonexist allow\n"
                             "* * unknown-src @anyvm ask\n")
    assert ev(snap, "svc", "work", "other").result == "ask"
    assert ev(snap, "svc", "unknown-src", "other").result == "ask"
    snap = snap_of(tmp_path, "svc * work other ask target=no-such\n")
    assert ev(snap, "svc", "work", "other").result == "deny"


def test_user_response(tmp_path):
    snap = snap_of(tmp_path, "svc * work @anyvm ask user=u\n")
    res = ev(snap, "svc", "work", "other")
    assert res.handle_user_response(False).result == "deny"
    assert res.handle_user_response(True, "nope").result == "deny"
    ok = res.handle_user_response(True, "tpl")
    assert (ok.result, ok.target, ok.user) == ("allow", "tpl", "u")


# --- resolution output (spec 3.5) ------------------------------------------------------

def test_daemon_lines(tmp_path):
    snap = snap_of(tmp_path, "svc * work @adminvm allow\nsvc * work other allow user=bob\n"
                             "svc * work @dispvm allow autostart=yes\n"
                             "svc * work remote allow\nsvc * work work allow\n"
                             "svc * work tpl ask\n")
    assert ev(snap, "svc", "work", "@adminvm").daemon_lines(SI) == [
        "user=DEFAULT", "result=allow", "target=dom0", "autostart=True",
        "requested_target=@adminvm"]
    assert ev(snap, "svc", "work", "other").daemon_lines(SI) == [
        "user=bob", "result=allow", "target=other", "target_uuid=uuid:u-other",
        "autostart=True", "requested_target=other"]
    assert ev(snap, "svc", "work", "@dispvm").daemon_lines(SI) == [
        "user=DEFAULT", "result=allow", "target=@dispvm:dvm",
        "target_uuid=@dispvm:uuid:u-dvm", "autostart=True", "requested_target=@dispvm"]
    assert ev(snap, "svc", "work", "remote", "a").daemon_lines(SI) == [
        "user=DEFAULT", "result=allow", "target=work", "target_uuid=uuid:u-work",
        "autostart=True", "requested_target=remote", "service=qubesair.SSHProxy+remote+svc+a"]
    assert ev(snap, "svc", "work", "work").daemon_lines(SI) == ["result=deny"]  # loopback
    assert ev(snap, "svc", "work", "uuid:u-work").daemon_lines(SI) == ["result=deny"]
    assert ev(snap, "svc", "work", "tpl").daemon_lines(SI) == ["result=deny"]


# --- fail closed ------------------------------------------------------------------------

def test_broken_policy_denies_everything(tmp_path):
    d = tmp_path / "policy.d"
    d.mkdir()
    (d / "10-ok.policy").write_text("* * @anyvm @anyvm allow\n")
    (d / "20-bad.policy").write_text("svc * a b allow target=\n")
    snap = load_policy([d])
    assert snap.error == f"{d}/20-bad.policy:1: invalid empty redirect token"
    res = ev(snap, "svc", "work", "other")
    assert res.result == "deny" and res.reason.startswith("policy failed to load: ")
    assert snap.allowed_targets("svc", "", "work", ["other"], SI) == []


def test_unreadable_policy_dir(tmp_path):
    f = tmp_path / "notadir"
    f.write_text("")
    snap = load_policy([f])
    assert snap.error is not None and ev(snap, "svc", "work", "other").result == "deny"


def test_garbage_requests_never_raise(tmp_path):
    snap = snap_of(tmp_path, "* * @anyvm @anyvm allow\n")
    for svc, src, tgt in [("", "work", "other"), ("svc", "", ""), ("s\0x", "w\n", "\0"),
                          ("svc", "work", "@dispvm:"), ("svc", "work", "uuid:")]:
        assert snap.evaluate(svc, "", src, tgt, SI).result in ("allow", "deny", "ask")


# --- index vs linear scan, allowed_targets ------------------------------------------------

TOKENS_SRC = ["work", "other", "uuid:u-work", "dom0", "@adminvm", "*", "@anyvm", "@tag:both",
              "@tag:t1", "@type:AppVM", "@type:TemplateVM", "@dispvm:dvm", "nosuch"]
TOKENS_TGT = TOKENS_SRC + ["@default", "@dispvm", "@dispvm:@tag:dt", "@dispvm:uuid:u-dvm",
                           "uuid:u-other", f"uuid:{DOM0_UUID}"]
REQ_TARGETS = ["work", "other", "dom0", "@adminvm", "tpl", "dvm", "@dispvm", "@dispvm:dvm",
               "@dispvm:dvm2", "", "nosuch", "uuid:u-other", f"uuid:{DOM0_UUID}", "remote"]


def test_index_agrees_with_linear_scan(tmp_path):
    rnd = random.Random(42)
    for round_ in range(15):
        lines = []
        for _ in range(rnd.randrange(1, 40)):
            svc = rnd.choice(["svc", "other.Svc", "*"])
            arg = "*" if svc == "*" else rnd.choice(["*", "+", "+a"])
            act = rnd.choice(["allow target=dom0", "deny", "ask", "allow"])
            tgt = rnd.choice(TOKENS_TGT)
            if tgt == "@default" and act == "allow":
                act = "allow target=other"
            lines.append(f"{svc} {arg} {rnd.choice(TOKENS_SRC)} {tgt} {act}")
        d = tmp_path / f"p{round_}"
        d.mkdir()
        (d / "30-r.policy").write_text("\n".join(lines) + "\n")
        snap = load_policy([d])
        assert snap.error is None, snap.error
        for _ in range(150):
            svc = rnd.choice(["svc", "other.Svc", "third"])
            arg = rnd.choice(["", "a", "b"])
            src = rnd.choice(["work", "other", "dom0", "tpl", "nosuch"])
            tgt = rnd.choice(REQ_TARGETS)
            try:
                req = Request(svc, "+" + arg if arg else "+", src, tgt, SI)
            except AccessDenied:
                continue
            assert snap.find_rule(req) is snap.find_rule_linear(req), (lines, svc, arg, src, tgt)
        names = list(SI.names()) + ["nosuch"]
        for src in ("work", "other", "tpl"):
            for svc in ("svc", "other.Svc"):
                expect = [n for n in names if ev(snap, svc, src, n).result == "allow"]
                assert snap.allowed_targets(svc, "", src, names, SI) == expect


def test_allowed_targets_listing(tmp_path):
    snap = snap_of(tmp_path, "admin.vm.List * work @tag:both allow target=dom0\n"
                             "admin.vm.List * work @adminvm allow target=dom0\n"
                             "admin.vm.List * work tpl ask\n"
                             "admin.vm.List * work @anyvm deny\n")
    assert snap.allowed_targets("admin.vm.List", "", "work", list(SI.names()), SI) == [
        "dom0", "work", "other"]
    assert snap.allowed_targets("admin.vm.List", "", "other", list(SI.names()), SI) == []


# --- system info -----------------------------------------------------------------------

def test_sysinfo_updated_and_uuid_entries():
    data = {"domains": dict(DOMAINS)}
    data["domains"]["uuid:u-work"] = DOMAINS["work"]  # client-library style alias entry
    si = SystemInfo.from_json(data)
    assert len(si) == len(DOMAINS)
    assert si.get("uuid:u-work").name == "work"
    si2 = si.updated({"other": dict(DOMAINS["other"], tags=["t1"]), "tpl": None})
    assert "t1" in si2.get("other").tags and "tpl" not in si2
    assert si2.get("work") is si.get("work")  # unchanged records shared
    assert "t1" not in si.get("other").tags  # the old object is unchanged


# --- reload -------------------------------------------------------------------------------

def test_watcher_reloads_and_swaps(tmp_path):
    run, etc = tmp_path / "run", tmp_path / "etc"
    etc.mkdir()
    (etc / "30-a.policy").write_text("svc * work other deny\n")
    seen = []
    w = PolicyWatcher([run, etc], on_reload=seen.append)
    first = w.snapshot
    assert ev(first, "svc", "work", "other").result == "deny"
    assert w.check() is False
    (etc / "30-a.policy").write_text("svc * work other allow\n")
    assert w.check() is True
    assert ev(w.snapshot, "svc", "work", "other").result == "allow"
    assert ev(first, "svc", "work", "other").result == "deny"  # old snapshot untouched
    assert seen == [w.snapshot]
    # runtime dir appears and shadows
    run.mkdir()
    (run / "30-a.policy").write_text("svc * work other ask\n")
    assert w.check() is True and ev(w.snapshot, "svc", "work", "other").result == "ask"
    # include file change is noticed
    (etc / "include").mkdir()
    (etc / "include" / "x").write_text("svc2 * work other allow\n")
    (etc / "40-b.policy").write_text("!include include/x\n")
    assert w.check() is True
    (etc / "include" / "x").write_text("svc2 * work other deny\n")
    assert w.check() is True and ev(w.snapshot, "svc2", "work", "other").result == "deny"
    # broken -> fail closed; fixed -> works again
    (etc / "40-b.policy").write_text("!include include/missing\n")
    assert w.check() is True and w.snapshot.error is not None
    assert ev(w.snapshot, "svc", "work", "other").result == "deny"
    (etc / "40-b.policy").unlink()
    assert w.check() is True and w.snapshot.error is None


def test_watcher_thread(tmp_path):
    import time
    etc = tmp_path / "etc"
    etc.mkdir()
    w = PolicyWatcher([etc], interval=0.02)
    with w:
        (etc / "30-a.policy").write_text("svc * work other allow\n")
        for _ in range(200):
            if ev(w.snapshot, "svc", "work", "other").result == "allow":
                break
            time.sleep(0.02)
    assert ev(w.snapshot, "svc", "work", "other").result == "allow"
