"""``sockredir-lab image build [--force]``: build (or show) the cached guest image."""

from __future__ import annotations

import time

from lab.vm import image


def register(subparsers) -> None:
    group = subparsers.add_parser("image", help="the guest root filesystem image")
    sub = group.add_subparsers(dest="image_command", required=True)
    build = sub.add_parser("build", help="build the image from images/rootfs.toml (cached)")
    build.add_argument("--force", action="store_true", help="rebuild even if it is cached")
    build.set_defaults(func=cmd_build)


def cmd_build(args) -> int:
    started = time.monotonic()
    built = image.ensure_image(progress=print, force=args.force,
                               extra_packages=args.settings.image_packages)
    on_disk = built.rootfs.stat().st_blocks * 512 / 2**20
    print(f"image {built.key}: {built.rootfs} ({built.rootfs.stat().st_size / 2**20:.0f} MB "
          f"filesystem, {on_disk:.0f} MB on disk, {time.monotonic() - started:.1f}s)")
    print(f"client key: {built.client_key}")
    print(f"host key:   {built.host_key_line}")
    return 0
