"""The guest's root filesystem: mmdebstrap tree -> SSH keys + init -> ext4 file, cached.

The recipe is ``images/rootfs.toml``; the guest's PID 1 is ``images/guest-init.sh``; a restored guest
first runs ``images/guest-restored.c`` (built statically here). An image is built once per recipe (the
cache key hashes the recipe, those two files and this module's build steps), in a temporary directory
renamed into place, and never modified afterwards: guests write to overlays of their own. Each build makes a fresh SSH host key (its public line is stored beside the
image so the host can pin it) and a fresh client key pair (the private key stays beside the image).
``mkfs.ext4 -d`` turns the tree into an image without loop devices or mounts.
"""

from __future__ import annotations

import inspect
import os
import re
import shutil
import subprocess
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from lab import IMAGES_DIR, LabError
from lab.cache import atomic_dir, cache_dir, digest_of, file_lock

RECIPE = IMAGES_DIR / "rootfs.toml"
GUEST_INIT = IMAGES_DIR / "guest-init.sh"
GUEST_INIT_PATH = "/sbin/lab-init"  # where the initramfs switch_root's to
GUEST_RESTORED = IMAGES_DIR / "guest-restored.c"
GUEST_RESTORED_PATH = "/usr/local/sbin/lab-restored"  # run first in a guest restored from a snapshot
ROOTFS_NAME = "rootfs.ext4"
CLIENT_KEY_NAME = "client_ed25519"
HOST_KEY_NAME = "host_ed25519.pub"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class GuestImage:
    rootfs: Path          # ext4 image; never written (guests write to overlays of their own)
    client_key: Path      # private key whose public half is in the guest's authorized_keys
    host_key_line: str    # "ssh-ed25519 AAAA..." of the guest's sshd, for pinning
    key: str              # content hash of the recipe
    label: str            # ext4 volume label of the root filesystem


PACKAGE_NAME_RE = re.compile(r"[a-z0-9][a-z0-9+.-]+")


def load_recipe(path: Path = RECIPE) -> dict:
    try:
        recipe = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise LabError(f"cannot read the rootfs recipe {path}: {exc}; fix the file") from exc
    for field in ("suite", "variant", "mirror", "hostname", "label", "packages"):
        if field not in recipe:
            raise LabError(f"rootfs recipe {path} lacks '{field}'; add it (see the comments there)")
    return recipe


def image_key(recipe_path: Path = RECIPE, init_path: Path = GUEST_INIT) -> str:
    """Hash of everything that shapes the image: recipe, guest programs and the build steps below."""
    steps = [inspect.getsource(fn) for fn in (_mmdebstrap_argv, _customise_tree, _make_ext4)]
    return digest_of([recipe_path, init_path, GUEST_RESTORED, *steps])


def ensure_image(progress: Progress = print, force: bool = False,
                 extra_packages: Sequence[str] = ()) -> GuestImage:
    """Return the cached image for the current recipe, building it first if needed.

    ``extra_packages`` (a user's additions, e.g. their own server to test) make a separate image,
    cached under its own key; the lab's image is left as it is.
    """
    extras = _checked_packages(extra_packages)
    key = cache_key(extras)
    entry = cache_dir("images") / key
    # Concurrent sessions build an image once; the others wait, then load it.
    with file_lock(entry.parent / ".build.lock"):
        if force or not (entry / ROOTFS_NAME).exists():
            recipe = load_recipe()
            recipe["packages"] = list(dict.fromkeys([*recipe["packages"], *extras]))
            _build(entry, recipe, progress)
    return _load(entry, key)


def cache_key(extras: Sequence[str] = ()) -> str:
    """The lab's image key, or for a user's extra packages a key of its own (order-free)."""
    extras = _checked_packages(extras)
    return image_key() if not extras else digest_of([image_key(), *extras])


def _checked_packages(packages: Sequence[str]) -> list[str]:
    bad = [name for name in packages if not PACKAGE_NAME_RE.fullmatch(name)]
    if bad:
        raise LabError(f"guest image packages {bad}: not Debian package names (lower case letters, "
                       "digits, + - .); check the --image-package / sockredir_image_packages setting")
    return sorted(set(packages))


def _load(entry: Path, key: str) -> GuestImage:
    recipe = load_recipe()
    return GuestImage(rootfs=entry / ROOTFS_NAME, client_key=entry / CLIENT_KEY_NAME,
                      host_key_line=(entry / HOST_KEY_NAME).read_text().strip(), key=key,
                      label=recipe["label"])


def _build(entry: Path, recipe: dict, progress: Progress) -> None:
    _require_tools()
    started = time.monotonic()
    with atomic_dir(entry) as out, tempfile.TemporaryDirectory(dir=entry.parent,
                                                               prefix=".tree.") as scratch:
        os.chmod(scratch, 0o755)  # apt's _apt user must reach the tree, or apt warns and runs as root
        tree = Path(scratch) / "tree"
        progress(f"image: mmdebstrap {recipe['suite']} ({len(recipe['packages'])} packages)")
        _run_streaming(_mmdebstrap_argv(recipe, tree), progress, "mmdebstrap")
        progress(f"image: tree ready after {time.monotonic() - started:.0f}s; adding keys and init")
        _customise_tree(tree, out, recipe)
        progress("image: mkfs.ext4 -d")
        size_mb = _make_ext4(tree, out / ROOTFS_NAME, recipe)
        _remove_tree(tree)
    used_mb = (entry / ROOTFS_NAME).stat().st_blocks * 512 / 2**20
    progress(f"image: built {entry / ROOTFS_NAME} in {time.monotonic() - started:.0f}s "
             f"({size_mb} MB filesystem, {used_mb:.0f} MB on disk)")


def _require_tools() -> None:
    missing = [tool for tool in ("mmdebstrap", "mkfs.ext4", "ssh-keygen", "gcc")
               if not shutil.which(tool)]
    if missing:
        raise LabError(f"building the guest image needs {', '.join(missing)}; "
                       "run scripts/install-deps as root")
    if os.geteuid() != 0:
        raise LabError("building the guest image needs root (mmdebstrap must own files as root); "
                       "run `sockredir-lab image build` as root")


def _mmdebstrap_argv(recipe: dict, tree: Path) -> list[str]:
    argv = ["mmdebstrap", "--mode=root", f"--variant={recipe['variant']}",
            "--include=" + ",".join(recipe["packages"])]
    for pattern in recipe.get("dpkg_path_exclude", []):
        argv.append(f"--dpkgopt=path-exclude={pattern}")
    # The image needs no apt lists or caches: nothing is installed in a guest.
    argv.append("--aptopt=Acquire::Languages \"none\"")
    return argv + [recipe["suite"], str(tree), recipe["mirror"]]


def _customise_tree(tree: Path, out: Path, recipe: dict) -> None:
    """Keys, sshd settings, hostname and the init script; everything else is Debian's default."""
    for old in (tree / "etc/ssh").glob("ssh_host_*"):
        old.unlink()  # openssh-server's postinst made keys; each build gets its own
    host_key = tree / "etc/ssh/ssh_host_ed25519_key"
    _keygen(host_key, "sockredir-guest-host")
    (out / HOST_KEY_NAME).write_text(" ".join(
        host_key.with_suffix(".pub").read_text().split()[:2]) + "\n")

    client_key = out / CLIENT_KEY_NAME
    _keygen(client_key, "sockredir-lab-client")
    ssh_dir = tree / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    authorized = ssh_dir / "authorized_keys"
    authorized.write_text(client_key.with_suffix(".pub").read_text())
    authorized.chmod(0o600)

    (tree / "etc/ssh/sshd_config.d/lab.conf").write_text(
        "# Written by lab/image.py: key-only root login, no PAM or DNS delays, many sessions.\n"
        "HostKey /etc/ssh/ssh_host_ed25519_key\n"
        "PermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UsePAM no\n"
        "UseDNS no\n"
        "PrintMotd no\n"
        "MaxSessions 64\n"
        "MaxStartups 64\n")

    (tree / "etc/hostname").write_text(recipe["hostname"] + "\n")
    (tree / "etc/hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {recipe['hostname']}\n"
                                    "::1 localhost ip6-localhost ip6-loopback\n")
    (tree / "etc/fstab").write_text("# mounts are made by /sbin/lab-init\n")
    init = tree / GUEST_INIT_PATH.lstrip("/")
    shutil.copyfile(GUEST_INIT, init)
    init.chmod(0o755)
    # Static: no dynamic loading, so it runs in milliseconds even in a TCG guest just restored.
    subprocess.run(["gcc", "-static", "-Os", "-Wall", "-o", str(tree / GUEST_RESTORED_PATH.lstrip("/")),
                    str(GUEST_RESTORED)], check=True, capture_output=True, text=True)
    (tree / "lib/modules").mkdir(parents=True, exist_ok=True)  # the modules disk mounts below it


def _keygen(path: Path, comment: str) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True, stdin=subprocess.DEVNULL)


def _make_ext4(tree: Path, image: Path, recipe: dict) -> int:
    """Write ``tree`` into a sparse ext4 file; returns the filesystem size in MB."""
    used = subprocess.run(["du", "-sxm", str(tree)], capture_output=True, text=True, check=True)
    tree_mb = int(used.stdout.split()[0])
    size_mb = int(tree_mb * 1.2) + int(recipe.get("free_mb", 512))
    # No journal: the disk is thrown away with every guest, so there is nothing to recover.
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", recipe["label"], "-O", "^has_journal",
                    "-m", "0", "-E", "lazy_itable_init=0", "-d", str(tree), str(image),
                    f"{size_mb}M"], check=True, capture_output=True, text=True)
    image.chmod(0o444)
    return size_mb


def _run_streaming(argv: list[str], progress: Progress, what: str) -> None:
    """Run ``argv`` passing its info lines to ``progress``; on failure raise with its output tail."""
    tail: list[str] = []
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:
            line = line.rstrip()
            tail = (tail + [line])[-30:]
            if line.startswith(("I: ", "E: ", "W: ")):
                progress(f"image: {what}: {line[3:]}")
    finally:
        proc.stdout.close()
        rc = proc.wait()
    if rc != 0:
        raise LabError(f"{what} failed (exit {rc}); check the Debian mirror and the package list "
                       "in images/rootfs.toml. Last output:\n" + "\n".join(tail))


def _remove_tree(tree: Path) -> None:
    shutil.rmtree(tree, ignore_errors=True)
