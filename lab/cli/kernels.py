"""``sockredir-lab kernels list|fetch|lock|check``: the kernel catalog from the command line."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

from lab import LabError, api
from lab.kernel import config as kconfig
from lab.kernel import fetch as kernels
from lab.kernel.catalog import (ENV_PREFIX, Catalog, env_var_of, locked_packages, locked_url_sha256, source_from_value,
                                test_id_of)


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

    build = sub.add_parser("build", help="build a kernel from a source tree or tarball, cached, "
                                         "to boot like any catalogued kernel")
    build.add_argument("source", metavar="SRC",
                       help="a kernel source tree (e.g. a git checkout), a tarball of one, or "
                            "debian:linux-source-X.Y (Debian's source package, fetched like the catalog's kernels)")
    build.add_argument("--id", dest="kernel_id", required=True, metavar="ID",
                       help="the kernel's id (test id kernel_<ID>), e.g. 6.6 or bpf-next")
    build.add_argument("--config", type=Path, metavar="FRAGMENT",
                       help="your config fragment (CONFIG_X=y lines), merged after the lab's")
    build.add_argument("--patch", dest="patches", action="append", type=Path, default=[], metavar="FILE",
                       help="a git-format patch to apply before building (repeatable, in order); a "
                            "second patch set rebuilds only what changed")
    build.add_argument("-j", "--jobs", type=int, default=None, help="make -j (default: the cores)")
    build.set_defaults(func=cmd_build)

    check = sub.add_parser("check", help="what the lab and the redirect need of a kernel's "
                                         "configuration, and whether it is there")
    check.add_argument("kernel", metavar="ID|host|PATH",
                       help="a catalog id, `host`, or a kernel .deb, vmlinuz, .config or build directory")
    check.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    check.set_defaults(func=cmd_check)


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


def cmd_build(args) -> int:
    from lab.kernel import build

    started = time.monotonic()
    from lab.kernel import fetch

    progress = lambda line: print(line, flush=True)  # noqa: E731
    built = build.build_kernel(fetch.source_of(args.source, progress), args.kernel_id, args.config,
                               jobs=args.jobs, progress=progress, patches=args.patches)
    source = args.source if fetch.is_debian_source(args.source) else Path(args.source).expanduser().resolve()
    print(f"kernel {args.kernel_id}: {built.release} ready ({time.monotonic() - started:.0f} s)")
    entry = f'[[kernel]]\nid = "{args.kernel_id}"\nbuild = "{source}"'
    if args.config:
        entry += f'\nconfig = "{args.config.expanduser().resolve()}"'
    if args.patches:
        entry += "\npatches = [" + ", ".join(f'"{p.expanduser().resolve()}"' for p in args.patches) + "]"
    print(f"boot it like any other kernel, from a catalog entry (your kernels.toml, then "
          f"pytest --kernels-toml FILE -k {test_id_of(args.kernel_id)}):\n{entry}")
    variable = env_var_of(args.kernel_id)
    if variable[len(ENV_PREFIX):].replace("_", ".") == args.kernel_id and not args.config and not args.patches:
        print(f"or: {variable}={source} pytest -k {test_id_of(args.kernel_id)}")
    return 0


def cmd_check(args) -> int:
    config = _config_of(args.kernel, args.settings)
    verdicts = kconfig.check(config)
    if args.json:
        print(json.dumps({"kernel": args.kernel, "source": config.source, "capabilities": [
            {"name": v.capability.name, "ok": v.ok, "boot": v.capability.boot,
             "purpose": v.capability.purpose,
             "options": {f"CONFIG_{name}": value for name, value in v.values.items()},
             "missing": [f"CONFIG_{o.name}" for o in v.missing]} for v in verdicts]}, indent=2))
    else:
        print(f"kernel {args.kernel}: configuration from {config.source}")
        width = max(len(v.capability.name) for v in verdicts)
        for verdict in verdicts:
            options = " ".join(f"CONFIG_{name}={value}" for name, value in verdict.values.items())
            status = "ok" if verdict.ok else "MISSING"
            role = "boot" if verdict.capability.boot else "    "
            print(f"  {verdict.capability.name.ljust(width)}  {status:7}  {role}  {options}"
                  f"  ({verdict.capability.purpose})")
        missing = [v for v in verdicts if not v.ok]
        if any(v.capability.boot for v in missing):
            print("this kernel cannot boot a lab guest: build it with the options marked MISSING "
                  "(built in, or as modules)")
        elif missing:
            print("tests that need a MISSING capability skip on this kernel, with the option named")
        else:
            print("everything the lab and the redirect use is there")
    essential = set(kconfig.REDIRECT)
    return 1 if any(not v.ok and (v.capability.boot or v.capability.name in essential)
                    for v in verdicts) else 0


def _config_of(what: str, settings) -> kconfig.KernelConfig:
    """The configuration of a catalog id, the host, or a file or directory the user names."""
    if what == api.HOST:
        config = kconfig.for_host(platform.release())
        if config is None:
            raise LabError("the host kernel keeps no configuration here (/proc/config.gz or "
                           f"/boot/config-{platform.release()}). Fix: load the `configs` module")
        return config
    path = Path(what).expanduser()
    catalog = settings.catalog()
    if catalog.find(what) and not (os.sep in what or path.exists()):
        artifacts = kernels.prepare(catalog.get(what), lock=catalog.read_lock())
    elif path.is_dir():
        dotconfig = path / ".config"
        if not dotconfig.is_file():
            raise LabError(f"{path} has no .config. Fix: name the kernel build's output directory")
        return kconfig.for_file(dotconfig, _kernelrelease(path))
    elif path.is_file() and kernels.kind_of(path) == "deb":
        artifacts = kernels.prepare(source_from_value(path.name, str(path), "command line"))
    elif path.is_file():
        return kconfig.for_file(path)
    else:
        known = ", ".join(catalog.ids)
        raise LabError(f"{what!r} is neither a catalog id ({known}), `host`, nor an existing file or "
                       "directory. Fix: give a kernel .deb, vmlinuz, .config or build directory")
    config = kconfig.of_kernel(artifacts)
    if config is None:
        raise LabError(f"kernel {what} ({artifacts.release}) ships no configuration and its image "
                       "embeds none (IKCONFIG). Fix: give its .config file instead")
    return config


def _kernelrelease(build_dir: Path) -> str:
    release = build_dir / "include" / "config" / "kernel.release"
    return release.read_text().strip() if release.exists() else ""
