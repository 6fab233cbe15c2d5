"""``sockredir-lab shell``: a guest from the command line.

    sockredir-lab shell --kernel 6.1                 interactive root shell (system ssh, pinned key)
    sockredir-lab shell --kernel 6.1 -- uname -a     run a command, print its output, exit with its code
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from lab import api
from lab.cache import cache_dir


def register(subparsers) -> None:
    shell = subparsers.add_parser("shell", help="boot a guest and run a command or a shell in it")
    shell.add_argument("--kernel", default=api.DEFAULT_KERNEL, help=f"catalog kernel id (default {api.DEFAULT_KERNEL})")
    shell.add_argument("--timeout", type=float, default=600, help="command timeout in seconds")
    shell.add_argument("--keep", action="store_true",
                       help="keep the guest's work directory (console log, QEMU output)")
    shell.add_argument("command", nargs=argparse.REMAINDER,
                       help="after `--`: the command to run (default: an interactive shell)")
    shell.set_defaults(func=cmd_shell)


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
