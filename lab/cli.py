"""The ``sockredir-lab`` command. Each subcommand group lives in its own ``add_*`` function."""

from __future__ import annotations

import argparse
import sys

from lab import LabError


def add_kernels(sub) -> None:
    from lab import kernels_cli

    kernels_cli.register(sub)


def add_image(sub) -> None:
    from lab import image_cli

    image_cli.register(sub)


def add_guest(sub) -> None:
    from lab import guest_cli

    guest_cli.register(sub)


def add_redirect(sub) -> None:
    from lab import redirect_cli

    redirect_cli.register(sub)


def add_verify(sub) -> None:
    from lab import verify_cli

    verify_cli.register(sub)


def add_suite(sub) -> None:
    from lab import suite_cli

    suite_cli.register(sub)


GROUPS = [add_kernels, add_image, add_guest, add_redirect, add_verify, add_suite]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sockredir-lab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in GROUPS:
        try:
            add(sub)
        except ImportError as exc:  # a group still being written must not break the others
            print(f"sockredir-lab: skipping a command group: {exc}", file=sys.stderr)
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


if __name__ == "__main__":
    sys.exit(main())
