"""The multi-user gate's figures for issue 4. Prints numbers; asserts nothing.

Scenario (from bench_acl.py's generator): 100 users with a management and a GUI VM each,
about 10,000 domains, 200 sets, about 5,000 Casbin policy lines, and a 1,000-rule qrexec
policy. Measures: warm gate decision in process (p50/p99), snapshot rebuild after a
policy change, admin.vm.List for one user end to end, and a gated call end to end
against the same call from dom0.
"""

import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_acl import build_yaml
from qubesd_harness import QubesdProcess, raw_call

from qrexec.policy.defaults import install_default_policy
from qubesd import store
from qubesd.daemon import Daemon
from qubesd.gate import Gate
from qubesd.model.app import App
from qubesd.model.vm import AppVM, TemplateVM
from qubesd.policystate import build_state
from qubesd.protocol import encode_request
from qubesd.registry import REGISTRY
from qubesd.store import open_store

N_USERS = 100
N_PLAIN = 9_700  # + 201 acting VMs + template + dom0: about 10,000 domains
GATED = ("admin.vm.List", "admin.vm.property.Get", "admin.vm.property.GetAll",
         "admin.vm.Start", "admin.vm.CurrentState")


def setup(root: Path, rng: random.Random) -> list[str]:
    text, inventory = build_yaml(rng)
    config = root / "etc"
    install_default_policy(config)
    (config / "userdomains.yaml").write_text(text)
    rules = []
    for u in range(N_USERS):
        for method in GATED:
            rules.append(f"{method} * u{u:03d}-admin @adminvm allow target=dom0")
            rules.append(f"{method} * u{u:03d}-admin @anyvm allow target=dom0")
    (config / "policy.d" / "30-bench.policy").write_text("\n".join(rules) + "\n")

    app = App()
    app.load_initial_values()
    app.add_new_vm(TemplateVM, "tpl", "black")
    app.set("default_template", "tpl")
    names = []
    for name, tags in inventory[:N_PLAIN]:
        vm = app.add_new_vm(AppVM, name, "red", template="tpl")
        vm.tags.update(dict.fromkeys(tags))
        names.append(name)
    for u in range(N_USERS):
        app.add_new_vm(AppVM, f"u{u:03d}-admin", "purple", template="tpl")
        app.add_new_vm(AppVM, f"u{u:03d}-gui", "purple", template="tpl")
    app.add_new_vm(AppVM, "sys-secadmin", "black", template="tpl")
    (root / "lib").mkdir(parents=True)
    (root / "lib" / "qubes.xml").write_bytes(store.serialize(app))
    print(f"scenario: {len(app.domains):,} domains, {len(rules):,} bench qrexec rules "
          f"(+ default policy), userdomains.yaml {len(text) / 1e3:.0f} kB")
    return names


def pct(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def bench_in_process(root: Path, names: list[str], rng: random.Random) -> None:
    daemon = Daemon(root / "lib", root / "run", root / "etc")
    daemon.committer = open_store(daemon.app, root / "lib" / "qubes.xml")
    daemon.app.change_listeners.append(daemon._invalidate)
    gate = daemon.gate = Gate(daemon)
    state = gate.state
    print(f"Casbin policy lines: {len(__import__('acl').policy_lines(state.users)):,}; "
          f"qrexec rules loaded: {len(state.qrexec):,}")
    app = daemon.app
    methods = [REGISTRY.get(m) for m in GATED]
    requests = [(app.domains[f"u{rng.randrange(N_USERS):03d}-admin"], rng.choice(methods),
                 app.domains[rng.choice(names)]) for _ in range(20_000)]
    gate.decide(*requests[0], "", b"")  # builds the system info once
    clock = time.perf_counter_ns
    for label in ("first decision of each request (indexes warm, decision not cached)",
                  "repeated decision (memoised until the policy or a domain changes)"):
        samples = []
        allowed = 0
        for src, method, dest in requests:
            t = clock()
            verdict = gate.decide(src, method, dest, "", b"")
            samples.append(clock() - t)
            allowed += verdict.allowed
        samples.sort()
        print(f"gate decision in process, {label}: p50 {pct(samples, 50) / 1e3:.1f} us, "
              f"p99 {pct(samples, 99) / 1e3:.1f} us ({allowed / len(requests):.0%} allowed; "
              "targets <= 10 us / <= 50 us)")
    times = []
    for _ in range(5):
        t = time.perf_counter()
        build_state(gate.policy_dirs, gate.users_path)
        times.append(time.perf_counter() - t)
    print(f"snapshot rebuild (qrexec policy + userdomains + Casbin index): median "
          f"{statistics.median(times) * 1e3:.0f} ms (target <= 300 ms)")
    src = app.domains["u000-admin"]
    t = time.perf_counter()
    visible = gate.visible_names(src, "admin.vm.List")
    print(f"visible set for one user over {len(app.domains):,} domains in process: "
          f"{(time.perf_counter() - t) * 1e3:.1f} ms ({len(visible)} domains)")


def bench_end_to_end(root: Path) -> None:
    q = QubesdProcess(root)
    q.start(timeout=120)
    try:
        own = q.ok("admin.vm.List", "dom0", src="u000-admin")
        target = own.split(" ", 1)[0]
        req = encode_request("admin.vm.List", "u000-admin", "dom0")
        times = []
        for _ in range(10):
            t = time.perf_counter()
            raw_call(q.socket, req)
            times.append(time.perf_counter() - t)
        print(f"admin.vm.List for one user end to end: median "
              f"{statistics.median(times) * 1e3:.1f} ms, {own.count(chr(10))} lines "
              "(target <= 30 ms)")
        gated = encode_request("admin.vm.property.Get", "u000-admin", target, "label")
        direct = encode_request("admin.vm.property.Get", "dom0", target, "label")
        assert raw_call(q.socket, gated).startswith(b"0\0"), raw_call(q.socket, gated)
        # interleaved, so that load from elsewhere on the machine hits both alike
        t_gated, t_dom0 = [], []
        clock = time.perf_counter
        for _ in range(5000):
            t = clock()
            raw_call(q.socket, gated)
            t_gated.append(clock() - t)
            t = clock()
            raw_call(q.socket, direct)
            t_dom0.append(clock() - t)
        g, d = statistics.median(t_gated), statistics.median(t_dom0)
        print(f"property.Get end to end, median of 5,000 interleaved: gated {g * 1e6:.0f} us, "
              f"dom0 {d * 1e6:.0f} us; the gated call takes {(g / d - 1) * 100:+.0f}% "
              "(target <= +20%)")
    finally:
        q.stop()


def main() -> None:
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        names = setup(root, rng)
        bench_in_process(root, names, rng)
        bench_end_to_end(root)


if __name__ == "__main__":
    main()
