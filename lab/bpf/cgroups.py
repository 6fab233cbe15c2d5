"""cgroup v2 on a target: find the mount, resolve user paths, make and remove dedicated cgroups.

The redirect is attached to one cgroup, so every socket created by a process in that cgroup is
accelerated. The lab only ever attaches to cgroups it made (under ``<cgroup2 mount>/sockredir-lab``)
or that the user named explicitly; the root cgroup is always refused.

The cgroup2 mount is found from the target's ``/proc/self/mounts``, never assumed: the host has
a hybrid layout (``/sys/fs/cgroup/unified``), guests a unified one (``/sys/fs/cgroup``).
"""

from __future__ import annotations

import contextlib
import posixpath
import re
import secrets
from dataclasses import dataclass
from typing import Iterator

from lab import LabError
from lab.vm.target import Target

LAB_PARENT = "sockredir-lab"


@dataclass(frozen=True)
class Mount:
    source: str
    path: str
    fstype: str
    options: str


def _unescape(field: str) -> str:
    """/proc/self/mounts escapes space, tab, newline and backslash as octal (\\040 ...)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mounts(text: str) -> list[Mount]:
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 4:
            mounts.append(Mount(_unescape(fields[0]), _unescape(fields[1]), fields[2], fields[3]))
    return mounts


def mounts(target: Target, fresh: bool = False) -> list[Mount]:
    """The target's mount table, read once and remembered (``fresh`` after the lab mounts something)."""
    if fresh or "mounts" not in target.memo:
        text = target.run(["cat", "/proc/self/mounts"], check=True).stdout
        target.memo["mounts"] = parse_mounts(text)
    return target.memo["mounts"]


def mounts_of_type(target: Target, fstype: str) -> list[Mount]:
    return [m for m in mounts(target) if m.fstype == fstype]


def cgroup2_mount(target: Target) -> str:
    found = mounts_of_type(target, "cgroup2")
    if not found:
        raise LabError(f"no cgroup2 filesystem is mounted on {target.name}; mount one with "
                       "`mount -t cgroup2 none /sys/fs/cgroup` (the redirect attaches to a cgroup v2)")
    return found[0].path


def resolve(target: Target, path: str) -> str:
    """The absolute path of an existing, non-root cgroup v2 directory named by the user.

    ``path`` is absolute (a directory inside the cgroup2 mount) or relative to the mount.
    """
    mount = cgroup2_mount(target)
    absolute = posixpath.normpath(path if path.startswith("/") else posixpath.join(mount, path))
    if absolute == mount:
        raise LabError(f"refusing the root cgroup {mount}: the redirect would apply to every process "
                       f"on {target.name}; create a cgroup below it (e.g. {mount}/{LAB_PARENT}/mine)")
    if not absolute.startswith(mount.rstrip("/") + "/"):
        raise LabError(f"{path} is not inside the cgroup2 mount {mount} on {target.name}; give a path "
                       f"under it or relative to it")
    if not target.exists(posixpath.join(absolute, "cgroup.procs")):
        raise LabError(f"cgroup {absolute} does not exist on {target.name}; create it with "
                       f"`mkdir {absolute}` and move the processes to accelerate into it")
    return absolute


def create(target: Target, name: str | None = None) -> str:
    """Make ``<cgroup2 mount>/sockredir-lab/<name>`` (a fresh unique name by default)."""
    name = name or f"c{secrets.token_hex(4)}"
    if "/" in name or name in ("", ".", ".."):
        raise LabError(f"bad cgroup name {name!r}: use one path component")
    path = posixpath.join(cgroup2_mount(target), LAB_PARENT, name)
    target.make_dirs(path)
    return path


def pids(target: Target, path: str) -> list[int]:
    text = target.read_text(posixpath.join(path, "cgroup.procs"))
    return [int(p) for p in text.split()] if text is not None else []


def move(target: Target, pid: int, path: str) -> None:
    """Move process ``pid`` (and, for a thread group leader, all its threads) into ``path``."""
    procs = posixpath.join(path, "cgroup.procs")
    target.run(["sh", "-c", 'echo "$1" > "$2"', "sh", str(pid), procs], check=True)


def remove(target: Target, path: str) -> None:
    """Remove an empty cgroup made by ``create`` (and the lab's parent if it is empty now)."""
    mount = cgroup2_mount(target)
    lab_parent = posixpath.join(mount, LAB_PARENT)
    if posixpath.dirname(path) != lab_parent:
        raise LabError(f"refusing to remove {path}: the lab only removes cgroups it made under {lab_parent}")
    if not target.is_dir(path):
        return
    left = pids(target, path)
    if left:
        raise LabError(f"cgroup {path} still has processes {left}; stop them (or move them to "
                       f"{mount}/cgroup.procs) before removing it")
    if not target.remove_dir(path):
        raise LabError(f"cannot remove cgroup {path} (rmdir failed although it has no processes)")
    # Another user of the lab may have a cgroup there: failing to remove the parent is fine.
    target.remove_dir(lab_parent)


@contextlib.contextmanager
def dedicated(target: Target, name: str | None = None) -> Iterator[str]:
    """A fresh cgroup for the duration of the block; removed afterwards."""
    path = create(target, name)
    try:
        yield path
    finally:
        remove(target, path)
