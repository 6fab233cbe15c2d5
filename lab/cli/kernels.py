"""``sockredir-lab kernels list|fetch|lock``: the kernel catalog from the command line."""

from __future__ import annotations

import time

from lab import LabError
from lab.kernel import fetch as kernels
from lab.kernel.catalog import Catalog, locked_packages, locked_url_sha256


def register(subparsers) -> None:
    group = subparsers.add_parser("kernels", help="the kernel catalog: list, fetch, lock")
    sub = group.add_subparsers(dest="kernels_command", required=True)

    listing = sub.add_parser("list", help="catalog entries, their locked versions and cache state")
    listing.set_defaults(func=cmd_list)

    fetch = sub.add_parser("fetch", help="download, extract and depmod kernels into the cache")
    fetch.add_argument("--id", dest="ids", action="append", metavar="ID",
                       help="only this kernel (repeatable); default: every available one")
    fetch.add_argument("--kernel", dest="overrides", action="append", default=[], metavar="ID=SRC",
                       help="take kernel ID from a .deb/vmlinuz path or URL (repeatable)")
    fetch.set_defaults(func=cmd_fetch)

    lock = sub.add_parser("lock", help="resolve Debian suites (and URLs) afresh, write the lock file")
    lock.add_argument("--id", dest="ids", action="append", metavar="ID",
                      help="only this kernel (repeatable); default: the whole catalog")
    lock.set_defaults(func=cmd_lock)


def cmd_list(args) -> int:
    catalog = args.settings.catalog()
    lock = catalog.read_lock()
    rows = [("ID", "TEST ID", "SOURCE", "LOCKED", "STATE")]
    for entry in catalog.entries:
        reason = entry.unavailable_reason()
        ready = None if reason else kernels.cached(entry, lock)
        state = (f"unavailable: {reason}" if reason
                 else f"cached: {ready.release}" if ready else "not fetched")
        rows.append((entry.id, entry.test_id, f"{entry.describe()} [{entry.origin}]",
                     _locked_text(entry, lock), state))
    for error in catalog.errors:
        rows.append((error.entry_id or "?", error.test_id, "-", "-", f"catalog error: {error}"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[4])
    return 1 if catalog.errors else 0


def _locked_text(entry, lock) -> str:
    if entry.source == "suite":
        packages = locked_packages(entry, lock)
        return packages[0].version if packages else "not locked"
    if entry.source == "url":
        sha = locked_url_sha256(entry, lock)
        return f"sha256 {sha[:12]}" if sha else "not locked"
    return "-"


def cmd_fetch(args) -> int:
    catalog = args.settings.catalog()
    for override in args.overrides:
        kernel_id, sep, source = override.partition("=")
        if not sep or not source:
            raise LabError(f"--kernel {override!r}: expected ID=PATH_OR_URL, e.g. 5.15=/tmp/linux.deb")
        catalog = catalog.with_override(kernel_id, source)
    entries = [catalog.get(i) for i in args.ids] if args.ids else list(catalog.entries)
    lock = catalog.read_lock()
    failed = 0
    for error in catalog.errors if not args.ids else ():
        print(f"error: {error}")
        failed += 1
    for entry in entries:
        reason = entry.unavailable_reason()
        if reason:
            print(f"{entry.id}: skipped: {reason}")
            continue
        started = time.monotonic()
        try:
            ready = kernels.prepare(entry, progress=lambda line: print(f"{entry.id}: {line}"), lock=lock)
        except LabError as exc:
            print(f"{entry.id}: FAILED: {exc}")
            failed += 1
            continue
        size = ready.vmlinuz.stat().st_size
        print(f"{entry.id}: {ready.release}  vmlinuz {size / 1e6:.1f} MB  modules {ready.modules_dir}"
              f"  ({time.monotonic() - started:.1f} s)")
    return 1 if failed else 0


def cmd_lock(args) -> int:
    # The lock pins the catalog as written: SOCKREDIR_KERNEL_* overrides do not leak into it.
    catalog = Catalog.load(args.settings.catalog_path(), environ={})
    failures = kernels.lock_kernels(catalog, args.ids, lock_path=catalog.lock_path)
    for error in catalog.errors:
        print(f"error: {error}")
    print(f"wrote {catalog.lock_path}")
    return 1 if failures or catalog.errors else 0
