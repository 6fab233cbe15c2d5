"""The ``sockredir-lab`` command. Each group of subcommands lives in its own ``lab/cli/<group>.py``
module exposing ``register(subparsers)``; each subcommand sets ``func`` (args -> exit code)."""

from __future__ import annotations

import argparse
import importlib
import sys

from lab import LabError

GROUP_MODULES = ["kernels", "image", "guest", "redirect", "verify", "suite"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sockredir-lab",
        description="eBPF socket redirection for same-host TCP, and a QEMU lab that proves it on many kernels.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in GROUP_MODULES:
        importlib.import_module(f"lab.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except LabError as exc:
        print(f"sockredir-lab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sockredir-lab: interrupted", file=sys.stderr)
        return 130

