"""`make run`: qubesd and qrexec-daemon in one process, on the embedded default.

State lives under ./var (libvirt's test:///default, which forgets its domains when the
process ends: qubesd keeps them in qubes.xml and starts the demo's running VMs again).
On a fresh state directory the multi-user demo (qubesd/demo.py) is seeded first.
"""

import argparse
import asyncio
import signal
import sys

from qrexec import daemon as qrexec_daemon
from qubesd import demo
from qubesd.daemon import Daemon, launch, parse_args


async def run(args: argparse.Namespace) -> None:
    fresh = not (args.state_dir / "qubes.xml").exists()
    if fresh and not args.no_demo:
        demo.seed_config(args.config_dir)
    daemon = Daemon(args.state_dir, args.run_dir, args.config_dir, args.libvirt_uri,
                    args.debug)
    await daemon.start()
    if fresh and not args.no_demo:
        await demo.seed_domains(daemon)
    elif args.libvirt_uri.startswith("test:"):
        # the test driver starts empty in every process: bring the demo VMs back up
        for name in demo.RUNNING:
            if name in daemon.app.domains:
                await daemon.power.start(daemon.app.domains[name])
    qrexec = asyncio.ensure_future(qrexec_daemon.serve(args.run_dir, args.config_dir))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"qubesd and qrexec-daemon are running; sockets in {args.run_dir}\n"
          f"  try: QUBESD_SOCKET={args.run_dir}/qubesd.sock .venv/bin/qvm-ls\n"
          f"  as alice: QREXEC_VM_SOCKET={args.run_dir}/qrexec/alice-admin.sock "
          f".venv/bin/qvm-ls\n  Ctrl-C stops both.", flush=True)
    await stop.wait()
    qrexec.cancel()
    await asyncio.gather(qrexec, return_exceptions=True)
    await daemon.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, prog="make run", with_demo=True,
                      description="qubesd and qrexec-daemon in one process; on a fresh "
                                  "state directory, the multi-user demo is seeded first.")
    return launch(args, run)


if __name__ == "__main__":
    sys.exit(main())
