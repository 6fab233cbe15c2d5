"""What the commands that work kernel by kernel share: the ``--kernel`` option, its resolution
(``lab.per_kernel.resolve``: one way for every command) and where each kernel's artifacts go."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

from lab import api, per_kernel
from lab.kernel.catalog import test_id_of


def add_kernel_option(parser, default: str = api.HOST) -> None:
    parser.add_argument("--kernel", dest="kernels", action="append", metavar="ID|host|all",
                        help=f"catalog kernel id, host, or all (repeatable; default {default})")
    parser.add_argument("--artifacts", type=Path, metavar="DIR",
                        help="where each guest's console and QEMU logs, its dmesg and, for a guest that "
                             "stopped answering, what QEMU could still tell go (one directory per "
                             "kernel; default ./artifacts/<command>-<time>, in the working directory)")


def artifacts_of(args, command: str) -> Callable[[str], Path]:
    """The kernel's directory under the command's artifacts (created when a guest boots)."""
    # Relative to the working directory, not to the package: an installed copy has no checkout to write into.
    root = (args.artifacts or Path("artifacts") / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    return lambda kernel: root / test_id_of(kernel)


def kernel_ids(args, default: list[str] | None = None) -> list[str]:
    return per_kernel.resolve(args.kernels or [], args.settings, default)


def progress(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)
