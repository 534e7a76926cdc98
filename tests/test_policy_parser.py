"""qrexec policy: file loading, line grammar, tokens and every parse error (spec 1, 2.1, 4)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from qrexec.policy import PolicySyntaxError, SystemInfo, load_policy
from qrexec.policy.tokens import (
    INTENDED,
    REDIRECT,
    SOURCE,
    TARGET,
    AdminVM,
    AnyVM,
    DefaultVM,
    DispVM,
    DispVMTag,
    DispVMTemplate,
    Literal,
    Star,
    TagVM,
    TypeVM,
    parse_token,
)

SYSINFO = SystemInfo.from_json({"domains": {
    "dom0": {"tags": ["dom0-tag"], "type": "AdminVM", "power_state": "Running",
             "uuid": "00000000-0000-0000-0000-000000000000"},
    "work": {"tags": ["t1"], "type": "AppVM", "power_state": "Running", "uuid": "u-work",
             "default_dispvm": "dvm"},
    "other": {"tags": [], "type": "AppVM", "power_state": "Halted", "uuid": "u-other"},
    "dvm": {"tags": ["dt"], "type": "AppVM", "power_state": "Halted", "uuid": "u-dvm",
            "template_for_dispvms": True},
}})


def write(d: Path, name: str, text: str) -> Path:
    p = d / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


@pytest.fixture
def pdir(tmp_path: Path) -> Path:
    d = tmp_path / "etc" / "policy.d"
    d.mkdir(parents=True)
    return d


def load_text(pdir: Path, text: str, name: str = "30-test.policy"):
    write(pdir, name, text)
    return load_policy([pdir])


def ev(snap, svc, src, tgt, arg=""):
    return snap.evaluate(svc, arg, src, tgt, SYSINFO)


# --- tokens in every context (spec 2.1) -------------------------------------------------

TOKEN_TABLE = [
    # token, class, allowed contexts
    ("work", Literal, {SOURCE, TARGET, REDIRECT, INTENDED}),
    ("uuid:u-work", Literal, {SOURCE, TARGET, REDIRECT, INTENDED}),
    ("dom0", Literal, {SOURCE, TARGET, REDIRECT, INTENDED}),
    ("foo/bar!baz", Literal, {SOURCE, TARGET, REDIRECT, INTENDED}),
    ("$anyvm", Literal, {SOURCE, TARGET, REDIRECT, INTENDED}),
    ("@adminvm", AdminVM, {SOURCE, TARGET, REDIRECT, INTENDED}),
    ("*", Star, {SOURCE, TARGET}),
    ("@anyvm", AnyVM, {SOURCE, TARGET}),
    ("@default", DefaultVM, {TARGET, INTENDED}),
    ("@dispvm", DispVM, {TARGET, REDIRECT, INTENDED}),
    ("@dispvm:dvm", DispVMTemplate, {SOURCE, TARGET, REDIRECT, INTENDED}),
    ("@dispvm:uuid:u-dvm", DispVMTemplate, {SOURCE, TARGET, REDIRECT, INTENDED}),
    ("@dispvm:@tag:dt", DispVMTag, {SOURCE, TARGET}),
    ("@tag:t1", TagVM, {SOURCE, TARGET}),
    ("@tag:a:b", TagVM, {SOURCE, TARGET}),
    ("@type:AppVM", TypeVM, {SOURCE, TARGET}),
    ("@type:Foo", TypeVM, {SOURCE, TARGET}),
]


@pytest.mark.parametrize("context", [SOURCE, TARGET, REDIRECT, INTENDED])
@pytest.mark.parametrize("text,cls,allowed", TOKEN_TABLE)
def test_token_contexts(text, cls, allowed, context):
    if context in allowed:
        tok = parse_token(text, context, filepath="f", lineno=1)
        assert type(tok) is cls
        assert str(tok) == text
    else:
        with pytest.raises(PolicySyntaxError) as e:
            parse_token(text, context, filepath="f", lineno=1)
        assert str(e.value) == f"f:1: invalid {context} token: {text!r}"


@pytest.mark.parametrize("text,msg", [
    ("", "invalid empty target token"),
    ("@tag:", "invalid empty @tag: token: '@tag:'"),
    ("@type:", "invalid empty @type: token: '@type:'"),
    ("@dispvm:", "invalid empty @dispvm: token: '@dispvm:'"),
    ("@dispvm:@tag:", "invalid empty @dispvm:@tag: token: '@dispvm:@tag:'"),
    ("@tag:@x", "invalid target token: '@tag:@x'"),
    ("@dispvm:@type:AppVM", "invalid target token: '@dispvm:@type:AppVM'"),
    ("@ANYVM", "invalid target token: '@ANYVM'"),
    ("@foo", "invalid target token: '@foo'"),
    ("@", "invalid target token: '@'"),
])
def test_token_errors(text, msg):
    with pytest.raises(PolicySyntaxError) as e:
        parse_token(text, TARGET, filepath="x.policy", lineno=7)
    assert str(e.value) == f"x.policy:7: {msg}"


# --- parse errors (spec 4), each reported as file:line: reason --------------------------

PARSE_ERRORS = [
    ("svc * a b", "wrong number of fields"),
    ("svc * a", "wrong number of fields"),
    ("svc * a b Allow", "invalid action: Allow"),
    ("svc * a b allow,target=x", "invalid action: allow,target=x"),
    ("svc * a b permit", "invalid action: permit"),
    ("svc * a b allow # note", "invalid action parameter syntax: '#'"),
    ("svc * a b allow \\", "invalid action parameter syntax: '\\\\'"),
    ("svc * a b allow target", "invalid action parameter syntax: 'target'"),
    ("svc * a b allow target=x target=y", "parameter given twice: 'target'"),
    ("svc * a b allow notify=true", "'notify' is 'true', but can be only 'yes' or 'no'"),
    ("svc * a b ask autostart=1", "'autostart' is '1', but can be only 'yes' or 'no'"),
    ("svc * a b deny target=x", "invalid parameters for action Deny: ['target=x']"),
    ("svc * a b deny user=u", "invalid parameters for action Deny: ['user=u']"),
    ("svc * a b deny autostart=no", "invalid parameters for action Deny: ['autostart=no']"),
    ("svc * a b deny default_target=x",
     "invalid parameters for action Deny: ['default_target=x']"),
    ("svc * a b allow default_target=x",
     "invalid parameters for action Allow: ['default_target=x']"),
    ("svc * a b allow foo=bar", "invalid parameters for action Allow: ['foo=bar']"),
    ("svc * a b ask =x", "invalid parameters for action Ask: ['=x']"),
    ("svc * a b allow notify=no x=1", "invalid parameters for action Allow: ['notify=no', 'x=1']"),
    ("a+b * a b allow", "service 'a+b' contains invalid characters: ('+',)"),
    ("a/b * a b allow", "service 'a/b' contains invalid characters: ('/',)"),
    ("svc +a/b a b allow", "argument '+a/b' contains invalid characters: ('/',)"),
    ("svc arg a b allow", "argument 'arg' does not start with +"),
    ("* +arg a b allow", "only * argument allowed for * service"),
    ("svc * @dispvm b allow", "invalid source token: '@dispvm'"),
    ("svc * @default b allow", "invalid source token: '@default'"),
    ("svc * a b allow target=@anyvm", "invalid redirect token: '@anyvm'"),
    ("svc * a b allow target=*", "invalid redirect token: '*'"),
    ("svc * a b allow target=@tag:x", "invalid redirect token: '@tag:x'"),
    ("svc * a b allow target=@type:x", "invalid redirect token: '@type:x'"),
    ("svc * a b allow target=@default", "invalid redirect token: '@default'"),
    ("svc * a b ask default_target=@dispvm:@tag:x",
     "invalid redirect token: '@dispvm:@tag:x'"),
    ("svc * a @bogus allow", "invalid target token: '@bogus'"),
    ("svc * a b allow target=", "invalid empty redirect token"),
    ("svc * a b ask default_target=", "invalid empty redirect token"),
    ("svc * @tag: b allow", "invalid empty @tag: token: '@tag:'"),
    ("svc * a @type: allow", "invalid empty @type: token: '@type:'"),
    ("svc * a @dispvm: allow", "invalid empty @dispvm: token: '@dispvm:'"),
    ("svc * a @dispvm:@tag: allow", "invalid empty @dispvm:@tag: token: '@dispvm:@tag:'"),
    ("svc * a @default allow", "allow action for @default rule must specify target= option"),
    ("!include", "invalid number of params"),
    ("!include a b", "invalid number of params"),
    ("!include-dir", "invalid number of params"),
    ("!include-service svc *", "invalid number of params"),
    ("!compat-4.0 x", "invalid number of params"),
    ("!foo x", "invalid directive"),
    ("!Include x", "invalid directive"),
    ("@include x", "wrong number of fields"),
    ("!include-service * +arg include/x", "only * argument allowed for * service"),
    ("!include-service a+b * include/x", "service 'a+b' contains invalid characters: ('+',)"),
]


@pytest.mark.parametrize("line,msg", PARSE_ERRORS)
def test_parse_errors(pdir, line, msg):
    snap = load_text(pdir, f"# first line\n\n{line}\n")
    assert snap.error == f"{pdir}/30-test.policy:3: {msg}"
    assert snap.rules == ()
    res = ev(snap, "svc", "work", "other")
    assert res.result == "deny"
    assert msg in res.reason


def test_include_missing_file(pdir):
    snap = load_text(pdir, "!include include/nope\n")
    assert snap.error == f"{pdir}/30-test.policy:1: not a file: {pdir}/include/nope"


def test_include_dir_not_dir(pdir):
    snap = load_text(pdir, "!include-dir nodir\n")
    assert snap.error == f"{pdir}/30-test.policy:1: not a directory: {pdir}/nodir"


def test_include_of_directory_is_not_a_file(pdir):
    (pdir / "include").mkdir()
    snap = load_text(pdir, "# x\n!include include\n")
    assert snap.error == f"{pdir}/30-test.policy:2: not a file: {pdir}/include"


@pytest.mark.parametrize("valid", [
    "svc * a b allow",
    "svc\t*\ta\tb\tallow",
    "   svc   +   a b deny   ",
    "svc +a+b a b allow",
    "* * * * deny",
    "svc * $anyvm b allow",
    "svc * @dispvm:dvm b allow",
    "svc * @dispvm:@tag:x b deny",
    "svc * a b allow target=x=y",
    "svc * a b ask target=dom0 default_target=@adminvm user=root notify=yes autostart=no",
    "svc * a @default ask",
    "svc * a @default allow target=@dispvm",
    "svc * a b deny notify=no",
    "svc * a b allow user=",
])
def test_valid_lines(pdir, valid):
    snap = load_text(pdir, valid + "\n")
    assert snap.error is None, snap.error
    assert len(snap.rules) == 1


def test_comments_and_no_inline_comment(pdir):
    snap = load_text(pdir, "# c\n   # indented\n\n\t\nsvc * a b allow\n")
    assert snap.error is None and len(snap.rules) == 1
    assert snap.rules[0].lineno == 5


def test_error_on_later_line_counts_physical_lines(pdir):
    snap = load_text(pdir, "svc * a b allow\r\n# x\r\nsvc * a b nope\r\n")
    assert snap.error == f"{pdir}/30-test.policy:3: invalid action: nope"


def test_invalid_utf8_fails_closed(pdir):
    (pdir / "30-x.policy").write_bytes(b"svc * a b allow\n\xff\n")
    snap = load_policy([pdir])
    assert snap.error == f"{pdir}/30-x.policy:2: invalid UTF-8 in policy file"


# --- files: candidates, names, order, shadowing (spec 1.1) ------------------------------

def test_candidate_filter(pdir):
    write(pdir, "README", "garbage\n")
    write(pdir, "foo.policy.rpmsave", "garbage\n")
    write(pdir, ".hidden.policy", "garbage\n")
    (pdir / "sub.policy").mkdir()
    write(pdir, "50-ok.policy", "svc * a b allow\n")
    snap = load_policy([pdir])
    assert snap.error is None
    assert len(snap.rules) == 1


def test_symlink_to_file_counts(pdir, tmp_path):
    real = write(tmp_path, "elsewhere", "svc * a b allow\n")
    os.symlink(real, pdir / "40-link.policy")
    snap = load_policy([pdir])
    assert snap.error is None and len(snap.rules) == 1


@pytest.mark.parametrize("name", ["Upper.policy", "a+b.policy", "sp ace.policy"])
def test_bad_filename_fails_whole_policy(pdir, name):
    write(pdir, "10-good.policy", "svc * a b allow\n")
    write(pdir, name, "svc * a b allow\n")
    snap = load_policy([pdir])
    assert snap.error == f"invalid filename: {pdir}/{name}"
    assert ev(snap, "svc", "a", "b").result == "deny"


def test_order_is_codepoint_and_first_match_wins(pdir):
    write(pdir, "9-z.policy", "svc * work other deny\n")
    write(pdir, "50-b.policy", "svc * work other allow\n")
    write(pdir, "10-a.policy", "svc * work other ask\n")
    snap = load_policy([pdir])
    assert [Path(r.filepath).name for r in snap.rules] == ["10-a.policy", "50-b.policy",
                                                           "9-z.policy"]
    assert ev(snap, "svc", "work", "other").result == "ask"


def test_runtime_dir_shadows_persistent(tmp_path):
    run = tmp_path / "run" / "policy.d"
    etc = tmp_path / "etc" / "policy.d"
    write(etc, "30-user.policy", "svc * work other deny\n")
    write(etc, "40-more.policy", "svc2 * work other allow\n")
    write(run, "30-user.policy", "svc * work other allow\n")
    write(run, "35-rt.policy", "svc3 * work other allow\n")
    snap = load_policy([run, etc])
    assert snap.error is None
    assert ev(snap, "svc", "work", "other").rule[0] == str(run / "30-user.policy")
    assert ev(snap, "svc", "work", "other").result == "allow"
    assert ev(snap, "svc2", "work", "other").result == "allow"
    assert ev(snap, "svc3", "work", "other").result == "allow"
    # a missing runtime directory is just empty
    assert load_policy([tmp_path / "nope", etc]).error is None


def test_empty_policy_denies(pdir):
    snap = load_policy([pdir])
    assert snap.error is None
    res = ev(snap, "svc", "work", "other")
    assert (res.result, res.reason, res.notify) == ("deny", "no matching rule found", True)


def test_snapshot_id_is_content_hash(pdir):
    write(pdir, "30-a.policy", "svc * a b allow\n")
    a = load_policy([pdir]).id
    assert load_policy([pdir]).id == a
    write(pdir, "30-a.policy", "svc * a b deny\n")
    assert load_policy([pdir]).id != a


# --- includes (spec 1.3, 1.4) ------------------------------------------------------------

def test_include_spliced_in_place(pdir):
    write(pdir, "include/inc", "svc * work other deny\n")
    snap = load_text(pdir, "svc * work dom0 allow\n!include include/inc\nsvc * work other allow\n")
    assert snap.error is None
    assert [r.lineno for r in snap.rules] == [1, 1, 3]
    res = ev(snap, "svc", "work", "other")
    assert res.result == "deny" and res.rule == (f"{pdir}/include/inc", 1)


def test_nested_include_relative_to_top_level_dir(pdir):
    write(pdir, "include/a", "!include include/b\n")
    write(pdir, "include/b", "svc * work other allow\n")
    snap = load_text(pdir, "!include include/a\n")
    assert snap.error is None, snap.error
    assert ev(snap, "svc", "work", "other").result == "allow"


def test_include_absolute_path(pdir, tmp_path):
    p = write(tmp_path, "abs.inc", "svc * work other allow\n")
    snap = load_text(pdir, f"!include {p}\n")
    assert snap.error is None and ev(snap, "svc", "work", "other").result == "allow"


def test_include_dir(pdir):
    write(pdir, "extra/20-b.policy", "svc * work other deny\n")
    write(pdir, "extra/10-a.policy", "svc * work other allow\n")
    write(pdir, "extra/README", "junk\n")
    write(pdir, "extra/.x.policy", "junk\n")
    snap = load_text(pdir, "!include-dir extra\n")
    assert snap.error is None
    assert ev(snap, "svc", "work", "other").result == "allow"
    write(pdir, "extra/Bad.policy", "svc * a b allow\n")
    snap = load_policy([pdir])
    assert snap.error == f"{pdir}/30-test.policy:1: invalid filename: {pdir}/extra/Bad.policy"


def test_include_service_per_service_syntax(pdir):
    write(pdir, "include/admin", "# c\n$include:include/admin2\nwork $tag:t1 allow,target=dom0\n")
    write(pdir, "include/admin2", "other @anyvm ask default_target=dom0\n")
    snap = load_text(pdir, "!include-service admin.vm.List * include/admin\n")
    assert snap.error is None, snap.error
    assert [(r.service, r.argument) for r in snap.rules] == [("admin.vm.List", None)] * 2
    res = ev(snap, "admin.vm.List", "work", "work")
    assert (res.result, res.target) == ("allow", "dom0")
    assert ev(snap, "admin.vm.Start", "work", "work").result == "deny"


def test_include_service_with_argument(pdir):
    write(pdir, "include/x", "work other allow\n")
    snap = load_text(pdir, "!include-service svc +arg include/x\n")
    assert ev(snap, "svc", "work", "other", "arg").result == "allow"
    assert ev(snap, "svc", "work", "other").result == "deny"


@pytest.mark.parametrize("line,msg", [
    ("!include-dir x", "invalid directive"),
    ("!include-service a * b", "invalid directive"),
    ("!compat-4.0", "invalid directive"),
    ("!include a b", "invalid number of params"),
    ("work other", "wrong number of fields"),
    ("work @anyvm permit", "invalid action: permit"),
])
def test_per_service_errors(pdir, line, msg):
    write(pdir, "include/x", f"\n{line}\n")
    snap = load_text(pdir, "!include-service svc * include/x\n")
    assert snap.error == f"{pdir}/include/x:2: {msg}"


def test_new_syntax_file_via_include_service_fails(pdir):
    write(pdir, "include/x", "svc * @anyvm @anyvm allow\n")
    snap = load_text(pdir, "!include-service svc * include/x\n")
    assert snap.error == f"{pdir}/include/x:1: invalid action: @anyvm"


def test_old_syntax_file_via_include_fails(pdir):
    write(pdir, "include/x", "work other allow\n")
    snap = load_text(pdir, "!include include/x\n")
    assert snap.error == f"{pdir}/include/x:1: wrong number of fields"


# --- cycles: syntax errors, not crashes ----------------------------------------------------

def test_include_self_cycle(pdir):
    snap = load_text(pdir, "!include 30-test.policy\n")
    assert snap.error is not None
    assert snap.error.startswith(f"{pdir}/30-test.policy:1: include cycle:")
    assert ev(snap, "svc", "a", "b").result == "deny"


def test_include_two_file_cycle(pdir):
    write(pdir, "include/a", "svc * a b allow\n!include include/b\n")
    write(pdir, "include/b", "\n\n!include include/a\n")
    snap = load_text(pdir, "!include include/a\n")
    assert snap.error.startswith(f"{pdir}/include/b:3: include cycle:")


def test_include_service_cycle(pdir):
    write(pdir, "include/a", "$include:include/a\n")
    snap = load_text(pdir, "!include-service svc * include/a\n")
    assert snap.error.startswith(f"{pdir}/include/a:1: include cycle:")


def test_include_dir_including_itself(pdir):
    write(pdir, "d/10-x.policy", "!include-dir d\n")
    snap = load_text(pdir, "!include-dir d\n")
    assert snap.error is not None and "include cycle" in snap.error


def test_same_file_included_twice_is_not_a_cycle(pdir):
    write(pdir, "include/rwx", "work other allow\n")
    write(pdir, "include/ro", "!include include/rwx\n")
    snap = load_text(pdir, "!include-service a * include/ro\n!include-service b * include/ro\n"
                           "!include-service c * include/rwx\n")
    assert snap.error is None and len(snap.rules) == 3


# --- !compat-4.0 (spec 1.5) ----------------------------------------------------------------

@pytest.fixture
def legacy(tmp_path: Path) -> Path:
    d = tmp_path / "legacy"
    d.mkdir()
    return d


def test_compat(pdir, legacy):
    write(legacy, "test.Svc", "work other allow\n$anyvm $anyvm ask,default_target=other\n")
    write(legacy, "test.Svc+b", "work other deny\n")
    write(legacy, "test.Svc+a", "$include:include/inc\n")
    write(legacy, "include/inc", "work dom0 allow\n")
    write(legacy, "test.Svc.rpmsave", "junk\n")
    write(legacy, "test.Svc.rpmnew", "junk\n")
    write(legacy, "x.swp", "junk\n")
    write(legacy, ".hidden", "junk\n")
    write(legacy, "bad name", "junk\n")
    write(pdir, "35-compat.policy", "!compat-4.0\n")
    write(pdir, "90-default.policy", "test.Svc * work other allow notify=yes\n")
    snap = load_policy([pdir], legacy_dir=legacy)
    assert snap.error is None, snap.error
    order = [(r.service, r.argument, Path(r.filepath).name) for r in snap.rules]
    assert order[:4] == [("test.Svc", "+a", "inc"), ("test.Svc", "+a", "test.Svc+a"),
                         ("test.Svc", "+a", "test.Svc+a"), ("test.Svc", "+b", "test.Svc+b")]
    assert order[6:8] == [("test.Svc", None, "test.Svc"), ("test.Svc", None, "test.Svc")]
    # argument-specific file: implicit deny at its end
    res = ev(snap, "test.Svc", "work", "other", "a")
    assert res.result == "deny" and res.rule[0] == str(legacy / "test.Svc+a")
    assert ev(snap, "test.Svc", "work", "other", "b").result == "deny"
    # argument-less file: falls through to later files
    assert ev(snap, "test.Svc", "work", "other", "c").result == "allow"
    assert ev(snap, "test.Svc", "other", "work").result == "ask"
    assert any("transitional" in w for w in snap.warnings)


def test_compat_not_recursive(pdir, legacy):
    write(legacy, "test.Svc", "!compat-4.0\n")
    write(pdir, "35-compat.policy", "!compat-4.0\n")
    snap = load_policy([pdir], legacy_dir=legacy)
    assert snap.error == f"{legacy}/test.Svc:1: !compat-4.0 is not recursive"


def test_compat_default_legacy_dir(tmp_path):
    etc = tmp_path / "etc" / "qubes" / "policy.d"
    write(etc, "35-compat.policy", "!compat-4.0\n")
    write(tmp_path / "etc" / "qubes-rpc" / "policy", "svc", "work other allow\n")
    snap = load_policy([etc])
    assert snap.error is None and ev(snap, "svc", "work", "other").result == "allow"


def test_new_format_does_not_translate_legacy_tokens(pdir):
    snap = load_text(pdir, "svc * $anyvm $anyvm allow\n")
    assert snap.error is None
    assert ev(snap, "svc", "work", "other").result == "deny"
