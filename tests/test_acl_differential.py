"""The compiled decision index must answer exactly like pycasbin's own ``enforce``.

Random userdomains files (roles with overlapping globs, allow and deny grants, GUI VMs,
officers, create_into) and random domain inventories (explicit names, tag rules,
created-by and guivm tags, noise) are loaded both into :class:`acl.Authorizer` and into
a real ``casbin.Enforcer`` with ``policies/casbin/model.conf`` and the snapshot adapter;
at least 100,000 random (source, method, destination) requests must agree.
"""

from __future__ import annotations

import random

import yaml

import acl
import userdomains

PATTERN_POOL = [
    "admin.vm.List", "admin.vm.Start", "admin.vm.Shutdown", "admin.vm.Kill", "admin.vm.Remove",
    "admin.vm.*", "admin.vm.property.*", "admin.vm.property.Get", "admin.vm.property.Get*",
    "admin.vm.?tart", "admin.*.Start", "admin.*", "*", "admin.vm.Create.*", "admin.label.*",
    "admin.Events", "admin.vm.feature.*", "admin.vm.tag.?et", "*.List", "admin.vm.Create.AppVM",
    "admin.property.Get", "admin.vm.CurrentState",
]

METHODS = [
    "admin.vm.List", "admin.vm.Start", "admin.vm.Shutdown", "admin.vm.Kill", "admin.vm.Remove",
    "admin.vm.property.Get", "admin.vm.property.GetAll", "admin.vm.property.Set",
    "admin.vm.Create.AppVM", "admin.vm.Create.TemplateVM", "admin.vm.CreateDisposable",
    "admin.label.List", "admin.label.Create", "admin.Events", "admin.vm.feature.Set",
    "admin.vm.tag.Get", "admin.vm.tag.Set", "admin.vm.CurrentState", "admin.property.Get",
    "admin.vmclass.List", "admin.vm.device.pci.Attach", "policy.List", "policy.Replace",
    "policy.acl.Get", "admin.vm.Start/x", "admin.vm.StartX", "adminXvmXStart", "policy",
]

# Requests lean on methods that roles name, so that allows are common enough to matter.
WEIGHTED_METHODS = METHODS + 3 * [
    "admin.vm.List", "admin.vm.Start", "admin.vm.property.Get", "admin.vm.Create.AppVM",
    "admin.Events", "admin.vm.Kill", "policy.List",
]


def random_config(rng: random.Random) -> str:
    n_sets = rng.randint(3, 7)
    sets = [f"s{i}" for i in range(n_sets)]
    domain_pool = [f"d{i}" for i in range(30)]
    tag_pool = [f"t{i}" for i in range(8)]
    roles = {
        f"r{i}": rng.sample(PATTERN_POOL, rng.randint(1, 3)) for i in range(rng.randint(2, 4))
    }
    roles["gui"] = rng.sample(PATTERN_POOL, rng.randint(1, 3))
    users = {}
    for u in range(rng.randint(2, 5)):
        body: dict[str, object] = {"management": [f"u{u}-admin{k}" for k in range(rng.randint(0, 2))]}
        if rng.random() < 0.6:
            body["gui"] = [f"u{u}-gui"]
        if rng.random() < 0.3:
            body["officer"] = True
        grants = []
        for _ in range(rng.randint(1, 3)):
            g: dict[str, object] = {
                "role": rng.choice(sorted(roles)),
                "sets": rng.sample(sets, rng.randint(1, 2)),
            }
            if rng.random() < 0.2:
                g["effect"] = "deny"
            grants.append(g)
        body["grants"] = grants
        if rng.random() < 0.6:
            body["create_into"] = rng.choice(sets)
        users[f"u{u}"] = body
    set_defs = {
        s: {
            "domains": rng.sample(domain_pool, rng.randint(0, 10)),
            "tags": rng.sample(tag_pool, rng.randint(0, 2)),
        }
        for s in sets
    }
    return yaml.safe_dump({"roles": roles, "users": users, "sets": set_defs})


def random_domains(
    rng: random.Random, snap: userdomains.Snapshot
) -> list[tuple[str, tuple[str, ...]]]:
    vms = sorted(snap.principals)
    guis = [v for v, p in snap.principals.items() if p.kind == "gui"]
    out = []
    for i in range(40):
        tags: set[str] = set()
        for _ in range(rng.randint(0, 4)):
            kind = rng.random()
            if kind < 0.35:
                tags.add(f"t{rng.randrange(9)}")
            elif kind < 0.6 and vms:
                tags.add("created-by-" + rng.choice(vms + ["stranger"]))
            elif kind < 0.85 and guis:
                tags.add("guivm-" + rng.choice(guis + ["dom0"]))
            else:
                tags.add(f"noise{rng.randrange(5)}")
        out.append((f"d{i}", tuple(sorted(tags))))
    return out


def test_index_matches_casbin_enforce() -> None:
    rng = random.Random(20261204)
    total = 0
    configs = 0
    allowed = 0
    while total < 100_000:
        snap = userdomains.parse(random_config(rng))
        domains = random_domains(rng, snap)
        authz = acl.Authorizer(snap)
        enforcer = acl.new_enforcer(snap, domains)
        sources = sorted(snap.principals) + ["nobody"]
        tags_of = dict(domains)
        for _ in range(5_000):
            src = rng.choice(sources)
            method = rng.choice(WEIGHTED_METHODS)
            dest = None if rng.random() < 0.2 else rng.choice(domains)[0]
            want = enforcer.enforce(src, acl.GLOBAL if dest is None else dest, method)
            got = authz.decide(src, method, dest, tags_of.get(dest, ()))
            assert got.allowed == want, (
                f"config #{configs}: {src} {method} {dest} tags={tags_of.get(dest)}: "
                f"index={got} casbin={want}\n{snap.text}"
            )
            allowed += want
            total += 1
        # visible() is a set-based listing; it must equal per-domain decide().
        for src in sources:
            for method in METHODS:
                expect = [n for n, t in domains if authz.decide(src, method, n, t).allowed]
                assert authz.visible(src, method, domains) == expect, (src, method)
        configs += 1
    # the random mix must exercise both answers substantially
    print(f"{total} requests over {configs} configs, {allowed / total:.1%} allowed")
    assert 0.1 < allowed / total < 0.9, allowed / total


def test_shipped_demo_matches_casbin_exhaustively() -> None:
    snap = userdomains.load(acl.MODEL_PATH.parent.parent / "userdomains.demo.yaml")
    domains = [
        ("work", ()), ("personal", ()), ("bob-work", ()), ("dev", ()), ("build", ()),
        ("sys-net", ()), ("sys-firewall", ()), ("mine", ("owner-alice",)),
        ("made", ("created-by-bob-admin",)), ("shown", ("guivm-sys-gui-alice",)),
        ("other", ("guivm-sys-gui-bob", "owner-bob")), ("dom0", ()),
    ]
    authz = acl.Authorizer(snap)
    enforcer = acl.new_enforcer(snap, domains)
    methods = sorted(set(METHODS) | {p for r in snap.roles.values() for p in r.patterns})
    for src in sorted(snap.principals) + ["nobody"]:
        for method in methods:
            for dest, tags in [(None, ())] + domains:
                want = enforcer.enforce(src, acl.GLOBAL if dest is None else dest, method)
                assert authz.decide(src, method, dest, tags).allowed == want, (src, method, dest)
