"""``sockredir-lab shell`` and ``sockredir-lab bench boot``: a guest from the command line.

    sockredir-lab shell --kernel 6.1                 interactive root shell (system ssh, pinned key)
    sockredir-lab shell --kernel 6.1 -- uname -a     run a command, print its output, exit with its code
    sockredir-lab bench boot --kernel 6.1 --runs 3   boot-to-ready and boot-to-first-command times
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lab import LabError, api
from lab.cache import cache_dir


def register(subparsers) -> None:
    shell = subparsers.add_parser("shell", help="boot a guest and run a command or a shell in it")
    shell.add_argument("--kernel", default="6.1", help="catalog kernel id (default 6.1)")
    shell.add_argument("--timeout", type=float, default=600, help="command timeout in seconds")
    shell.add_argument("--keep", action="store_true",
                       help="keep the guest's work directory (console log, QEMU output)")
    shell.add_argument("command", nargs=argparse.REMAINDER,
                       help="after `--`: the command to run (default: an interactive shell)")
    shell.set_defaults(func=cmd_shell)

    bench = subparsers.add_parser("bench", help="measurements of the lab itself")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    boot = bench_sub.add_parser("boot", help="seconds from QEMU start to the ready line and to the "
                                             "first command's result, per kernel")
    boot.add_argument("--kernel", dest="kernels", action="append", metavar="ID",
                      help="kernel id (repeatable; default: every available catalog kernel)")
    boot.add_argument("--runs", type=int, default=3, help="boots per kernel (default 3)")
    boot.set_defaults(func=cmd_bench_boot)


def available_kernel_ids(settings) -> list[str]:
    return [e.id for e in settings.catalog().entries if not e.unavailable_reason()]


def cmd_shell(args) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    workdir = Path(tempfile.mkdtemp(prefix=f"shell-{args.kernel}-", dir=cache_dir("run")))
    try:
        with api.guest(args.kernel, args.settings, workdir) as guest:
            if command:
                result = guest.target.run(shlex.join(command), timeout=args.timeout)
                sys.stdout.write(result.stdout)
                sys.stderr.write(result.stderr)
                print(f"[exit {result.rc}]", file=sys.stderr)
                return result.rc
            return _interactive(guest, workdir)
    finally:
        if args.keep:
            print(f"guest files kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _interactive(guest, workdir: Path) -> int:
    """The system ssh client, pinned to the image's host key. Ctrl-C belongs to the guest's shell
    while it runs, so we ignore SIGINT (the reaper would otherwise end the guest)."""
    known_hosts = workdir / "known_hosts"
    known_hosts.write_text(guest.known_hosts_line + "\n")
    argv = ["ssh", "-q", "-t", "-p", str(guest.port), "-i", str(guest.image.client_key),
            "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={known_hosts}",
            "-o", "StrictHostKeyChecking=yes", "-o", "GlobalKnownHostsFile=/dev/null",
            "root@127.0.0.1"]
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return subprocess.call(argv)
    finally:
        signal.signal(signal.SIGINT, previous)


def cmd_bench_boot(args) -> int:
    if args.runs < 1:
        raise LabError("--runs must be at least 1")
    settings = args.settings
    ids = args.kernels or available_kernel_ids(settings)
    image = api.guest_image(settings)
    rows = []
    for kernel_id in ids:
        kernel = api.prepare_kernel(kernel_id, settings)
        for run in range(1, args.runs + 1):
            with tempfile.TemporaryDirectory(prefix=f"bench-{kernel_id}-", dir=cache_dir("run")) as tmp:
                started = time.monotonic()
                with api.guest(kernel, settings, Path(tmp), image=image) as guest:
                    guest.target.run(["true"], timeout=60, check=True)
                    first_command = time.monotonic() - started
                    rows.append((kernel_id, run, guest.accel.name, guest.boot_seconds,
                                 guest.guest_uptime, guest.ssh_seconds, first_command))
            print(f"{kernel_id} run {run}: ready {guest.boot_seconds:.2f}s (guest uptime "
                  f"{guest.guest_uptime:.2f}s), first command {first_command:.2f}s", flush=True)
    _print_summary(rows)
    return 0


def _print_summary(rows: list[tuple]) -> None:
    print(f"\n{'kernel':8} {'accel':5} {'runs':>4} {'ready s (median)':>17} {'first command s':>16} "
          f"{'min':>6} {'max':>6}")
    for kernel_id in dict.fromkeys(row[0] for row in rows):
        mine = [row for row in rows if row[0] == kernel_id]
        ready = [row[3] for row in mine]
        first = [row[6] for row in mine]
        print(f"{kernel_id:8} {mine[0][2]:5} {len(mine):>4} {statistics.median(ready):>17.2f} "
              f"{statistics.median(first):>16.2f} {min(first):>6.2f} {max(first):>6.2f}")
