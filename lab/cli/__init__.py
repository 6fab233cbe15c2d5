"""The ``sockredir-lab`` command. Each group of subcommands lives in its own ``lab/cli/<group>.py``
module exposing ``register(subparsers)``; each subcommand sets ``func`` (args -> exit code) and finds
the lab's settings (catalog, extra guest packages, accelerator) in ``args.settings``.

``main`` is the command's one error boundary: an error the lab reports (``LabError``: a missing
kernel, a guest that died, a program the verifier refused, a bad option) is printed as its message
with exit status 2; anything else is a bug, reported in one line with the traceback saved to a file.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import traceback
from pathlib import Path

from lab import LabError, api

GROUP_MODULES = ["kernels", "image", "guest", "bench", "redirect", "conformance", "mutants", "verify", "suite",
                 "matrix"]
EXIT_LAB_ERROR = 2
EXIT_INTERNAL_ERROR = 70  # EX_SOFTWARE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sockredir-lab",
        description="eBPF socket redirection for same-host TCP, and a QEMU lab that proves it on many kernels.")
    parser.add_argument("--kernels-toml", type=Path, metavar="PATH",
                        help="your own kernel catalog (default $SOCKREDIR_KERNELS_TOML, else the lab's)")
    parser.add_argument("--image-package", action="append", default=[], metavar="PACKAGE",
                        help="a Debian package to add to the guest image (repeatable)")
    parser.add_argument("--accel", choices=("auto", "kvm", "tcg"), default=None,
                        help="force QEMU's accelerator (default: prove KVM by booting, else TCG)")
    parser.add_argument("--cold-boot", action="store_true",
                        help="boot every guest from scratch instead of restoring the snapshot saved "
                             "at a kernel's first boot")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in GROUP_MODULES:
        importlib.import_module(f"lab.cli.{name}").register(sub)
    return parser


def settings_from(args: argparse.Namespace) -> api.Settings:
    return api.Settings(kernels_toml=args.kernels_toml, image_packages=tuple(args.image_package),
                        accel=args.accel, cold_boot=args.cold_boot)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.settings = settings_from(args)
    try:
        return args.func(args) or 0
    except LabError as exc:
        print(f"sockredir-lab: error: {exc}", file=sys.stderr)
        return EXIT_LAB_ERROR
    except KeyboardInterrupt:
        print("sockredir-lab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`... | head`): not an error of ours. Point stdout at /dev/null so
        # the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:  # noqa: BLE001 - the boundary: a bug gets one line, not a traceback
        saved = _save_traceback()
        print(f"sockredir-lab: internal error: {type(exc).__name__}: {exc}\n"
              f"  this is a bug in sockredir-lab, not something you did; the traceback is in {saved}",
              file=sys.stderr)
        return EXIT_INTERNAL_ERROR


def _save_traceback() -> str:
    with tempfile.NamedTemporaryFile("w", prefix="sockredir-lab-traceback-", suffix=".txt",
                                     delete=False) as handle:
        traceback.print_exc(file=handle)
        return handle.name
