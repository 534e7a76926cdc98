"""Benchmark of qubesd.backend on test:///default: start/stop rates and query latency.

Usage: .venv/bin/python bench/bench_backend.py [N]   (default N=1000)

Runs the backend once inline (the default for test://) and once with every blocking
call in the thread pool (the default for other URIs), so the cost of the executor
hop is visible. Prints figures only; asserts nothing about time.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
import uuid as uuidlib

import libvirt

from qubesd.backend import DomainSpec, LibvirtBackend


def _median_ms(fn, repeat: int = 21) -> float:
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1000


async def run_once(n: int, use_executor: bool) -> None:
    b = LibvirtBackend("test:///default", use_executor=use_executor)
    await b.open()
    events = 0
    done = asyncio.Event()
    target = 4 * n  # defined, started, stopped, undefined per domain

    def count(_u: str, _e: str, _d: int) -> None:
        nonlocal events
        events += 1
        if events >= target:
            done.set()

    b.on_lifecycle(count)
    specs = [
        DomainSpec(name=f"bench{i:05d}", uuid=str(uuidlib.uuid4()), netvm="sys-net", qid=i + 1)
        for i in range(n)
    ]
    mode = "executor" if use_executor else "inline"
    try:
        t0 = time.perf_counter()
        for s in specs:
            await b.start(s)
        t_start = time.perf_counter() - t0

        # queries while n domains run
        ps_ms = _median_ms(b.power_states)
        one = specs[n // 2].uuid
        single_us = _median_ms(lambda: [b.power_state(one) for _ in range(1000)], 5)
        stats_ms = _median_ms(b.stats, 5)
        cur_us = _median_ms(lambda: [b.current_state(one) for _ in range(1000)], 5)

        # the alternative listing, for comparison: one getAllDomainStats(STATE) call
        def via_allstats() -> dict[str, int]:
            recs = b.conn.getAllDomainStats(
                libvirt.VIR_DOMAIN_STATS_STATE, libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE
            )
            return {d.UUIDString(): r["state.state"] for d, r in recs}

        alt_ms = _median_ms(via_allstats)

        t0 = time.perf_counter()
        for s in specs:
            await b.kill(s.uuid)
        t_stop = time.perf_counter() - t0

        t0 = time.perf_counter()
        for s in specs:
            b.undefine(s.uuid)
        t_undef = time.perf_counter() - t0

        t0 = time.perf_counter()
        try:
            await asyncio.wait_for(done.wait(), 30)
        except TimeoutError:
            pass
        t_drain = time.perf_counter() - t0
        delivered = events

        # concurrency: n starts gathered at once (matters only with the executor)
        t0 = time.perf_counter()
        await asyncio.gather(*(b.start(s) for s in specs))
        t_gather = time.perf_counter() - t0
        await asyncio.gather(*(b.kill(s.uuid) for s in specs))
        for s in specs:
            b.undefine(s.uuid)
    finally:
        b.close()

    print(f"[{mode}] N={n}")
    print(f"  start (define+create) x{n}: {t_start * 1000:8.1f} ms  {n / t_start:9.0f} /s")
    print(f"  kill (destroy)        x{n}: {t_stop * 1000:8.1f} ms  {n / t_stop:9.0f} /s")
    print(f"  undefine              x{n}: {t_undef * 1000:8.1f} ms  {n / t_undef:9.0f} /s")
    print(f"  start x{n} via gather      : {t_gather * 1000:8.1f} ms  {n / t_gather:9.0f} /s")
    print(
        f"  events delivered: {delivered} of {target} (drain after last call {t_drain * 1000:.1f} ms)"
    )
    print(f"  power_states() with {n + 1} active : {ps_ms:7.2f} ms (median of 21)")
    print(f"    getAllDomainStats(STATE) instead: {alt_ms:7.2f} ms")
    print(f"  power_state(uuid)   : {single_us:7.2f} us per call")
    print(f"  current_state(uuid) : {cur_us:7.2f} us per call")
    print(f"  stats() {n + 1} domains: {stats_ms:7.2f} ms")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    asyncio.run(run_once(n, use_executor=False))
    asyncio.run(run_once(n, use_executor=True))


if __name__ == "__main__":
    main()
