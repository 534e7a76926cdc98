"""qubesd figures for issue 2. Prints numbers; asserts nothing.

1. admin.vm.property.Get calls/s, one client, next to the same client against a trivial
   asyncio UNIX echo server (the floor of this machine), and their ratio;
2. 10,000 domains: daemon start (load), admin.vm.List from dom0, save (cold and warm),
   a mutating call end to end, resident memory;
3. 1,000 domains, 20 concurrent clients x 500 mixed calls: errors, writes/s, and
   whether every acknowledged write is visible afterwards and after a restart.
"""

import asyncio
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from qubesd_harness import QubesdProcess, raw_call

from qubesd import store
from qubesd.model.app import App
from qubesd.model.vm import AppVM, TemplateVM
from qubesd.protocol import encode_request


def make_store(path: Path, n: int) -> None:
    app = App()
    app.load_initial_values()
    app.add_new_vm(TemplateVM, "tpl", "black")
    app.set("default_template", "tpl")
    for i in range(n - 2):  # with dom0 and the template: n domains
        vm = app.add_new_vm(AppVM, f"vm{i:05d}", "red", template="tpl")
        vm.features["service.x"] = "1"
        vm.tags[f"owner-u{i % 100}"] = None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(store.serialize(app))


def rate(fn, seconds: float = 2.0) -> float:
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        count += 1
    return count / (time.perf_counter() - start)


def echo_server(path: str) -> threading.Thread:
    async def handle(reader, writer):
        await reader.read()
        writer.write(b"0\0default=True type=int 2")
        await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_unix_server(handle, path)
        async with server:
            await server.serve_forever()

    thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    thread.start()
    while not os.path.exists(path):
        time.sleep(0.01)
    return thread


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bench_get(tmp: Path) -> None:
    with QubesdProcess(tmp / "get") as q:
        q.ok("admin.vm.Create.TemplateVM", "dom0", "", b"name=tpl label=black")
        request = encode_request("admin.vm.property.Get", "dom0", "tpl", "vcpus")
        assert raw_call(q.socket, request).startswith(b"0\0")
        ours = rate(lambda: raw_call(q.socket, request))
    echo_path = str(tmp / "echo.sock")
    echo_server(echo_path)
    floor = rate(lambda: raw_call(echo_path, request))
    print(f"property.Get, one client: {ours:,.0f} calls/s; echo floor {floor:,.0f} calls/s; "
          f"ratio {ours / floor:.2f} (targets: >= 3,000/s and >= 0.5)")


def bench_10k(tmp: Path) -> None:
    n = 10_000
    q = QubesdProcess(tmp / "10k")
    make_store(q.xml, n)
    start = time.perf_counter()
    q.start(timeout=60)
    print(f"{n:,} domains: daemon start until the first answer {time.perf_counter() - start:.2f} s"
          " (target <= 2 s)")
    try:
        request = encode_request("admin.vm.List", "dom0", "dom0")
        times = []
        for _ in range(10):
            t = time.perf_counter()
            reply = raw_call(q.socket, request)
            times.append(time.perf_counter() - t)
        assert reply.count(b"\n") == n, reply.count(b"\n")
        print(f"{n:,} domains: admin.vm.List from dom0 median {statistics.median(times) * 1e3:.1f}"
              " ms (target <= 50 ms)")
        times = []
        for i in range(10):
            t = time.perf_counter()
            q.ok("admin.vm.feature.Set", f"vm{i:05d}", "bench", b"1")
            times.append(time.perf_counter() - t)
        print(f"{n:,} domains: a mutating call incl. its durable save, median "
              f"{statistics.median(times) * 1e3:.1f} ms")
        time.sleep(1)  # the daemon renders its save cache in the background after start
        times = []
        for i in range(10):
            t = time.perf_counter()
            q.ok("admin.vm.tag.Set", f"vm{i + 100:05d}", "bench")
            times.append(time.perf_counter() - t)
        print(f"{n:,} domains: first mutating calls after start, incl. save: max "
              f"{max(times) * 1e3:.1f} ms, median {statistics.median(times) * 1e3:.1f} ms")
        print(f"{n:,} domains: qubesd resident memory {rss_mib(q.proc.pid):.0f} MiB "
              "(target <= 300 MiB)")
    finally:
        q.stop()
    app = App()
    store.load(app, q.xml.read_bytes())
    file = store.QubesXmlFile(tmp / "save" / "qubes.xml")
    t = time.perf_counter()
    data = store.serialize(app)
    cold = time.perf_counter() - t
    file.write(data)
    cold_total = time.perf_counter() - t
    app.domains["vm00001"].set_feature("x", "y")
    t = time.perf_counter()
    file.write(store.serialize(app))
    warm = time.perf_counter() - t
    print(f"{n:,} domains: save cold {cold_total * 1e3:.0f} ms (serialise {cold * 1e3:.0f} ms), "
          f"save after one change {warm * 1e3:.0f} ms (target <= 200 ms); "
          f"{len(data) / 1e6:.1f} MB")


def bench_concurrent(tmp: Path) -> None:
    n, clients, calls = 1000, 20, 500
    q = QubesdProcess(tmp / "conc")
    make_store(q.xml, n)
    q.start(timeout=60)
    errors: list[str] = []
    written: list[tuple[str, str, str]] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        for i in range(calls):
            vm = f"vm{(c * calls + i) % (n - 2):05d}"
            kind = i % 4
            try:
                if kind == 0:
                    feature, value = f"c{c}-{i}", str(i)
                    reply = q.call("admin.vm.feature.Set", vm, feature, value.encode())
                    if reply == b"0\0":
                        with lock:
                            written.append((vm, feature, value))
                elif kind == 1:
                    reply = q.call("admin.vm.property.Get", vm, "label")
                elif kind == 2:
                    reply = q.call("admin.vm.List", vm)
                else:
                    reply = q.call("admin.vm.tag.Set", vm, f"t{c}")
                    if reply == b"0\0":
                        with lock:
                            written.append((vm, "tag", f"t{c}"))
                if not reply.startswith(b"0\0"):
                    errors.append(reply[:80].decode(errors="replace"))
            except OSError as err:
                errors.append(str(err))

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start

    def lost() -> int:
        missing = 0
        for vm, feature, value in written:
            if feature == "tag":
                ok = q.call("admin.vm.tag.Get", vm, value) == b"0\x001"
            else:
                ok = q.call("admin.vm.feature.Get", vm, feature) == b"0\0" + value.encode()
            missing += not ok
        return missing

    lost_live = lost()
    q.stop()
    q.start(timeout=60)
    lost_restart = lost()
    q.stop()
    total = clients * calls
    print(f"{n:,} domains, {clients} clients x {calls} mixed calls: {total / elapsed:,.0f} calls/s, "
          f"{len(written) / elapsed:,.0f} acknowledged durable writes/s (target >= 200), "
          f"errors {len(errors)}, lost writes {lost_live} live / {lost_restart} after restart")
    if errors:
        print("  first errors:", errors[:3])


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bench_get(tmp)
        bench_10k(tmp)
        bench_concurrent(tmp)


if __name__ == "__main__":
    socket.setdefaulttimeout(60)
    main()
