"""userdomains.yaml validation (with line numbers) and derived set membership."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

import userdomains
from userdomains import UserDomainsError, parse

POLICIES = Path(__file__).resolve().parent.parent / "policies"

VALID = """\
roles:
  owner: [admin.vm.*]
  gui: [admin.vm.List]
users:
  alice:
    management: [alice-admin]
    gui: [sys-gui-alice]
    grants:
      - {role: owner, sets: [alice]}
    create_into: alice
sets:
  alice: {domains: [work], tags: [owner-alice]}
"""


def test_valid_minimal() -> None:
    snap = parse(VALID)
    assert set(snap.users) == {"alice"}
    assert snap.principal_of("alice-admin") == userdomains.Principal(
        "alice-admin", "alice", "management", False
    )
    assert snap.principal_of("sys-gui-alice").kind == "gui"
    assert snap.principal_of("work") is None
    assert snap.warnings == ()


def _grant(grant: str) -> str:
    """A file whose only grant (on line 5) is ``grant``."""
    return f"roles: {{r: [x]}}\nusers:\n  u:\n    grants:\n      - {grant}\nsets: {{s: {{}}}}\n"


# (yaml text, expected line of the first issue, substring of its reason)
CASES: list[tuple[str, int, str]] = [
    ("", 1, "file is empty"),
    ("- a\n- b\n", 1, "top level must be a mapping"),
    ("roles: {}\nusers: {}\nsets: {}\nextra: 1\n", 4, "unknown key 'extra'"),
    ("roles: {}\nusers: {}\n", 1, "missing required key 'sets'"),
    ("roles: {}\nusers: {}\nsets: {}\nroles: {}\n", 4, "duplicate key 'roles'"),
    ("roles: {a: [x]\n", 2, "YAML syntax error"),
    ("roles: {}\nusers: {}\nsets: {}\n---\nroles: {}\n", 4, "YAML syntax error"),
    ("version: 2\nroles: {}\nusers: {}\nsets: {}\n", 1, "unsupported version"),
    # roles
    ("roles:\n  owner: []\nusers: {}\nsets: {}\n", 2, "must not be empty"),
    ("roles:\n  owner: admin.vm.*\nusers: {}\nsets: {}\n", 2, "must be a list"),
    ("roles:\n  owner:\n    - admin.vm.[SG]et\nusers: {}\nsets: {}\n", 3, "invalid method pattern"),
    ("roles:\n  owner:\n    - 'admin vm'\nusers: {}\nsets: {}\n", 3, "invalid method pattern"),
    ("roles:\n  owner:\n    - policy.Replace\nusers: {}\nsets: {}\n", 3, "reserved to officers"),
    ("roles:\n  owner: [a, a]\nusers: {}\nsets: {}\n", 2, "appears twice"),
    ("roles:\n  'bad role': [a]\nusers: {}\nsets: {}\n", 2, "invalid role name"),
    ("roles:\n  owner: [1]\nusers: {}\nsets: {}\n", 2, "must be a string"),
    # sets
    ("roles: {}\nusers: {}\nsets:\n  s: {domains: [0bad]}\n", 4, "cannot start with"),
    ("roles: {}\nusers: {}\nsets:\n  s: {domains: [Domain-0]}\n", 4, "reserved"),
    ("roles: {}\nusers: {}\nsets:\n  s: {domains: [none]}\n", 4, "reserved"),
    ("roles: {}\nusers: {}\nsets:\n  s: {domains: [default]}\n", 4, "reserved"),
    ("roles: {}\nusers: {}\nsets:\n  s: {domains: [work-dm]}\n", 4, "reserved"),
    ("roles: {}\nusers: {}\nsets:\n  s: {domains: [dom0]}\n", 4, "dom0 cannot be a member"),
    ("roles: {}\nusers: {}\nsets:\n  s: {domains: [" + "a" * 32 + "]}\n", 4, "shorter than 32"),
    ("roles: {}\nusers: {}\nsets:\n  s: {domains: ['a+b']}\n", 4, "illegal characters"),
    ("roles: {}\nusers: {}\nsets:\n  s: {tags: ['a.b']}\n", 4, "invalid tag"),
    ("roles: {}\nusers: {}\nsets:\n  s: {domain: [a]}\n", 4, "unknown key 'domain'"),
    ("roles: {}\nusers: {}\nsets:\n  s: [a]\n", 4, "must be a mapping"),
    ("roles: {}\nusers: {}\nsets:\n  s: {domains: [yes]}\n", 4, "quote it"),
    ("roles: {}\nusers: {}\nsets:\n  s: {domains: [a]}\n  s: {}\n", 5, "duplicate key 's'"),
    # users
    ("roles: {}\nusers:\n  u: {mgmt: [a]}\nsets: {}\n", 3, "unknown key 'mgmt'"),
    ("roles: {}\nusers:\n  u: {management: a-admin}\nsets: {}\n", 3, "must be a list"),
    ("roles: {}\nusers:\n  u: {management: [dom0]}\nsets: {}\n", 3, "AdminVM"),
    ("roles: {}\nusers:\n  u: {management: [x-dm]}\nsets: {}\n", 3, "reserved"),
    ("roles: {}\nusers:\n  u: {officer: 'yes'}\nsets: {}\n", 3, "true or false"),
    ("roles: {}\nusers:\n  u: {gui: [g]}\nsets: {}\n", 3, "no role 'gui'"),
    ("roles: {}\nusers:\n  u: {create_into: nope}\nsets: {}\n", 3, "unknown set 'nope'"),
    (
        "roles: {}\nusers:\n  u: {management: [a]}\n  v:\n    management: [b, a]\nsets: {}\n",
        5,
        "already acts for user 'u'",
    ),
    (
        "roles: {gui: [x]}\nusers:\n  u:\n    management: [a]\n    gui: [a]\nsets: {}\n",
        5,
        "already acts for user 'u' as management",
    ),
    # grants
    (
        _grant("{role: nope, sets: [s]}"),
        5,
        "unknown role 'nope'",
    ),
    (
        _grant("{role: r, sets: [s, t]}"),
        5,
        "unknown set 't'",
    ),
    (
        _grant("{role: r, sets: []}"),
        5,
        "must not be empty",
    ),
    (
        _grant("{role: r}"),
        5,
        "has no sets",
    ),
    (
        _grant("{sets: [s]}"),
        5,
        "has no role",
    ),
    (
        _grant("{role: r, sets: [s], effect: maybe}"),
        5,
        "effect must be 'allow' or 'deny'",
    ),
    (
        _grant("{role: r, sets: [s], scope: all}"),
        5,
        "unknown key 'scope'",
    ),
    ("roles: {r: [x]}\nusers:\n  u:\n    grants: {role: r}\nsets: {s: {}}\n", 4, "must be a list"),
    # YAML features that would blur what a line means
    ("roles:\n  a: &p [x]\n  b: *p\nusers: {}\nsets: {}\n", 3, "aliases are not allowed"),
    ("roles: {}\nusers: {}\nsets: {}\n<<: {a: 1}\n", 4, "must be plain strings"),
]


@pytest.mark.parametrize(("text", "line", "reason"), CASES)
def test_validation_errors(text: str, line: int, reason: str) -> None:
    with pytest.raises(UserDomainsError) as info:
        parse(text, source="ud.yaml")
    err = info.value
    assert err.line == line, str(err)
    assert reason in err.reason, str(err)
    assert str(err).startswith(f"ud.yaml:{line}:")


def test_all_errors_are_reported() -> None:
    text = textwrap.dedent("""\
        roles:
          owner: [admin.vm.*, 'bad pattern']
        users:
          u:
            management: [1abc]
            grants:
              - {role: ghost, sets: [s]}
        sets:
          s: {tags: ['no.dots']}
        """)
    with pytest.raises(UserDomainsError) as info:
        parse(text)
    lines = [i.line for i in info.value.issues]
    assert lines == [2, 5, 7, 9]


def test_bytes_must_be_utf8() -> None:
    with pytest.raises(UserDomainsError, match="UTF-8"):
        parse(b"roles: {}\xff")


def test_warnings_do_not_refuse() -> None:
    snap = parse(
        "roles: {r: [x]}\nusers:\n  u:\n    management: [a]\n    create_into: s\n"
        "  o: {officer: true}\nsets: {s: {}}\n"
    )
    reasons = [w.reason for w in snap.warnings]
    assert any("no allow grant" in r for r in reasons)
    assert any("no management VM" in r for r in reasons)


def test_snapshot_is_immutable_and_hashed() -> None:
    a = parse(VALID)
    b = parse(VALID.encode())
    c = parse(VALID + "\n# comment\n")
    assert a.id == b.id and a.id != c.id and len(a.id) == 64
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.id = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        a.users["mallory"] = a.users["alice"]  # type: ignore[index]


def test_shipped_files_validate() -> None:
    for name in ("userdomains.example.yaml", "userdomains.demo.yaml"):
        snap = userdomains.load(POLICIES / name)
        assert snap.warnings == ()
        assert {"alice", "bob", "sec"} <= set(snap.users)
        assert snap.principal_of("sys-secadmin").officer
    demo = userdomains.load(POLICIES / "userdomains.demo.yaml")
    assert demo.principal_of("sys-gui-bob") == userdomains.Principal(
        "sys-gui-bob", "bob", "gui", False
    )
    assert set(demo.sets) == {"alice", "bob", "shared-dev", "infra", "templates"}
    owner = demo.roles["owner"].patterns
    for needed in (
        "admin.vm.List", "admin.vm.CreateDisposable", "admin.vm.Remove", "admin.Events",
        "admin.vm.CurrentState", "admin.label.List", "admin.vmclass.List",
    ):
        assert needed in owner
    # no catch-all that would also hand out device and volume methods
    assert "admin.vm.*" not in owner


# -- membership -------------------------------------------------------------------------

MEMBERSHIP = """\
roles:
  owner: [admin.vm.*]
  gui: [admin.vm.List]
users:
  alice:
    management: [alice-admin, alice-admin2]
    gui: [sys-gui-alice]
    grants: [{role: owner, sets: [alice, shared]}]
    create_into: alice
  bob:
    management: [bob-admin]
    grants: [{role: owner, sets: [bob, shared]}]
    create_into: shared
  carol:
    management: [carol-admin]
sets:
  alice: {domains: [work, personal], tags: [owner-alice]}
  bob: {domains: [bob-work], tags: [owner-bob, team]}
  shared: {domains: [dev, work], tags: [team]}
  empty:
"""


@pytest.fixture(scope="module")
def snap() -> userdomains.Snapshot:
    return parse(MEMBERSHIP)


@pytest.mark.parametrize(
    ("name", "tags", "expected"),
    [
        ("work", [], {"alice", "shared"}),  # explicit, in two sets
        ("personal", [], {"alice"}),
        ("dev", [], {"shared"}),
        ("stranger", [], set()),
        ("x", ["owner-alice"], {"alice"}),  # tag rule
        ("x", ["team"], {"bob", "shared"}),  # one tag, two sets
        ("x", ["owner-alice", "owner-bob"], {"alice", "bob"}),
        ("x", ["created-by-alice-admin"], {"alice"}),  # created-by -> create_into
        ("x", ["created-by-alice-admin2"], {"alice"}),
        ("x", ["created-by-bob-admin"], {"shared"}),
        ("x", ["created-by-carol-admin"], set()),  # carol has no create_into
        ("x", ["created-by-sys-gui-alice"], set()),  # GUI VMs do not create into sets
        ("x", ["created-by-nobody"], set()),
        ("x", ["guivm-sys-gui-alice"], set()),  # GUI display is not set membership
        ("personal", ["created-by-bob-admin", "unrelated"], {"alice", "shared"}),
    ],
)
def test_sets_of(snap: userdomains.Snapshot, name: str, tags: list[str], expected: set[str]) -> None:
    assert snap.sets_of(name, tags) == frozenset(expected)
    assert snap.sets_of(name, iter(tags)) == frozenset(expected)  # any iterable


def test_displayed_by(snap: userdomains.Snapshot) -> None:
    assert snap.displayed_by(["guivm-sys-gui-alice", "x"]) == {"sys-gui-alice"}
    assert snap.displayed_by(["guivm-dom0"]) == frozenset()
    assert snap.displayed_by(["guivm-alice-admin"]) == frozenset()  # not a GUI VM


def test_selectors_agree_with_sets_of(snap: userdomains.Snapshot) -> None:
    domains = [
        ("work", ()), ("dev", ()), ("x", ("team",)), ("y", ("created-by-bob-admin",)),
        ("z", ("created-by-alice-admin",)), ("q", ("owner-alice",)), ("none1", ("zzz",)),
    ]
    for s in snap.sets:
        expected = [n for n, t in domains if s in snap.sets_of(n, t)]
        assert snap.members(s, domains) == expected
    assert snap.members("empty", domains) == []


def test_overlapping_users(snap: userdomains.Snapshot) -> None:
    assert snap.users_of_set("shared") == {"alice", "bob"}
    assert snap.users_of_set("alice") == {"alice"}
    assert snap.users_of_set("empty") == frozenset()
