"""Benchmark of the qrexec policy engine (prints figures; not a test).

For policies of 100, 1,000 and 10,000 rules over a 1,000-domain system:
parse time, evaluations/s for admin-only and mixed requests (~8% ask), and
the time of one filtered ``admin.vm.List`` (allowed_targets over all
domains) for one caller.  Run: ``.venv/bin/python bench/bench_policy.py``.
"""

from __future__ import annotations

import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qrexec.policy import SystemInfo, load_policy

N_DOMAINS = 1000
N_USERS = 50
ADMIN_METHODS = ["admin.vm.List", "admin.vm.Start", "admin.vm.Shutdown",
                 "admin.vm.property.Get", "admin.vm.property.Set", "admin.vm.feature.Get",
                 "admin.vm.tag.List", "admin.vm.CurrentState"]


def make_system() -> dict:
    rnd = random.Random(1)
    doms = {"dom0": {"tags": [], "type": "AdminVM", "uuid": "00000000-0000-0000-0000-000000000000",
                     "power_state": "Running", "template_for_dispvms": False,
                     "default_dispvm": None}}
    for i in range(N_USERS):
        doms[f"user{i}-admin"] = {"tags": ["mgmt"], "type": "AppVM", "uuid": f"a-{i}",
                                 "power_state": "Running", "template_for_dispvms": False,
                                 "default_dispvm": "default-dvm"}
    doms["default-dvm"] = {"tags": [], "type": "AppVM", "uuid": "dvm", "power_state": "Halted",
                           "template_for_dispvms": True, "default_dispvm": None}
    doms["sys-net"] = {"tags": [], "type": "AppVM", "uuid": "net", "power_state": "Running",
                       "template_for_dispvms": False, "default_dispvm": None}
    for i in range(10):
        doms[f"tpl-{i}"] = {"tags": [], "type": "TemplateVM", "uuid": f"t-{i}",
                            "power_state": "Halted", "template_for_dispvms": False,
                            "default_dispvm": None}
    i = 0
    while len(doms) < N_DOMAINS:
        owner = rnd.randrange(N_USERS)
        doms[f"vm{i}"] = {"tags": [f"owner-user{owner}", "appvm"], "type": "AppVM",
                          "uuid": f"u-{i}", "power_state": rnd.choice(["Running", "Halted"]),
                          "template_for_dispvms": False, "default_dispvm": "default-dvm"}
        i += 1
    return {"domains": doms}


def make_policy(n_rules: int) -> str:
    lines = []
    for u in range(N_USERS):
        for m in ADMIN_METHODS:
            lines.append(f"{m} * user{u}-admin @tag:owner-user{u} allow target=dom0")
        lines.append(f"admin.vm.List * user{u}-admin @adminvm allow target=dom0")
        lines.append(f"qubes.Filecopy * @tag:owner-user{u} @tag:owner-user{u} ask")
    tail = [
        "qubes.UpdatesProxy * @type:TemplateVM @default allow target=sys-net",
        "qubes.GetDate * @anyvm @default allow target=sys-net",
        "qubes.VMShell * @anyvm @anyvm deny",
        "qubes.Filecopy * @anyvm @anyvm deny",
        "qubes.OpenInVM * @anyvm @dispvm allow",
        "qubes.OpenInVM * @anyvm @anyvm ask",
        "admin.vm.List * @anyvm @anyvm deny notify=no",
    ]
    filler = []
    k = 0
    while len(lines) + len(filler) + len(tail) < n_rules:
        filler.append(f"test.Service{k % 500} +arg{k} vm{k % 900} vm{(k * 7) % 900} allow")
        k += 1
    body = lines[: max(0, n_rules - len(tail))] + filler
    return "\n".join(body[: n_rules - len(tail)] + tail) + "\n"


def make_requests(sysinfo_json: dict, n: int, mixed: bool) -> list[tuple]:
    rnd = random.Random(2)
    vms = [d for d in sysinfo_json["domains"] if d.startswith("vm")]
    by_owner: dict[str, list[str]] = {}
    for d in vms:
        by_owner.setdefault(sysinfo_json["domains"][d]["tags"][0], []).append(d)
    tpls = [d for d in sysinfo_json["domains"] if d.startswith("tpl-")]
    reqs = []
    for _ in range(n):
        u = rnd.randrange(N_USERS)
        r = rnd.random() if mixed else 0.0
        if r < 0.60:
            reqs.append((rnd.choice(ADMIN_METHODS), "", f"user{u}-admin",
                         rnd.choice(vms + ["dom0"])))
        elif r < 0.75:
            svc = rnd.choice(["qubes.Filecopy", "qubes.OpenInVM", "qubes.Gpg"])
            src = rnd.choice(vms)
            if svc == "qubes.Filecopy" and rnd.random() < 0.6:
                # same owner -> ask (with OpenInVM, about 8% of the mix overall)
                owner = sysinfo_json["domains"][src]["tags"][0]
                reqs.append((svc, "", src, rnd.choice(by_owner[owner])))
            else:
                reqs.append((svc, "", src, rnd.choice(vms)))
        elif r < 0.85:
            reqs.append((f"unknown.Svc{rnd.randrange(50)}", "", rnd.choice(vms),
                         rnd.choice(vms)))
        else:
            svc = rnd.choice(["qubes.UpdatesProxy", "qubes.GetDate", "qubes.VMShell"])
            src = rnd.choice(tpls) if svc == "qubes.UpdatesProxy" else rnd.choice(vms)
            reqs.append((svc, "", src, "" if svc != "qubes.VMShell" else rnd.choice(vms)))
    return reqs


def bench(n_rules: int, sysinfo: SystemInfo, sij: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        pdir = Path(tmp) / "policy.d"
        pdir.mkdir()
        (pdir / "50-bench.policy").write_text(make_policy(n_rules))
        parse = []
        for _ in range(3):
            t0 = time.perf_counter()
            snap = load_policy([Path(tmp) / "run", pdir])
            parse.append(time.perf_counter() - t0)
        assert snap.error is None, snap.error
        assert len(snap.rules) == n_rules, len(snap.rules)
    out = {"rules": n_rules, "parse_s": statistics.median(parse)}
    for label, mixed in (("admin", False), ("mixed", True)):
        reqs = make_requests(sij, 20000, mixed)
        rates = []
        asks = 0
        for _ in range(3):
            t0 = time.perf_counter()
            ev = snap.evaluate
            for svc, arg, src, tgt in reqs:
                ev(svc, arg, src, tgt, sysinfo)
            rates.append(len(reqs) / (time.perf_counter() - t0))
        asks = sum(1 for q in reqs if snap.evaluate(*q, sysinfo).result == "ask")
        out[label] = statistics.median(rates)
        out[label + "_ask_pct"] = 100.0 * asks / len(reqs)
    names = list(sysinfo.names())
    times = []
    for _ in range(20):
        t0 = time.perf_counter()
        allowed = snap.allowed_targets("admin.vm.List", "", "user3-admin", names, sysinfo)
        times.append(time.perf_counter() - t0)
    out["list_ms"] = statistics.median(times) * 1000
    out["list_n"] = len(allowed)
    return out


def main() -> None:
    sij = make_system()
    t0 = time.perf_counter()
    sysinfo = SystemInfo.from_json(sij)
    t_si = time.perf_counter() - t0
    t0 = time.perf_counter()
    sysinfo.updated({"vm1": dict(sij["domains"]["vm1"], tags=["x"])})
    t_up = time.perf_counter() - t0
    print(f"system: {len(sysinfo)} domains; SystemInfo.from_json {t_si * 1000:.2f} ms, "
          f"updated(1 domain) {t_up * 1000:.2f} ms")
    print(f"{'rules':>6} {'parse s':>8} {'admin ev/s':>11} {'mixed ev/s':>11} {'ask %':>6} "
          f"{'List ms':>8} {'listed':>6}")
    for n in (100, 1000, 10000):
        r = bench(n, sysinfo, sij)
        print(f"{r['rules']:>6} {r['parse_s']:>8.4f} {r['admin']:>11,.0f} {r['mixed']:>11,.0f} "
              f"{r['mixed_ask_pct']:>6.1f} {r['list_ms']:>8.2f} {r['list_n']:>6}")


if __name__ == "__main__":
    main()
