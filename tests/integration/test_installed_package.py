"""The lab as a user gets it: a wheel of this repository, installed into a fresh virtualenv outside
the repository, works from any directory.

Issue 11: the wheel used to hold the ``lab`` Python files only, without ``bpf/``, ``images/`` and
``scenarios/``, so an installed copy failed ("images/kernels.toml: kernel catalog not found"). The
data now travel inside the package (``lab/data/*``, see lab/__init__.py); these tests check the
wheel's contents and that the installed copy finds them through itself, not through a checkout.

No VM is needed here. The ``installed`` fixture is module-scoped and meant to be reused by tests
that boot a guest with the installed copy (``installed.run([...], cwd)``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

# The repository these tests belong to (not lab's location: an installed lab has no repository).
REPO = Path(__file__).resolve().parents[2]
DATA_DIRS = ("bpf", "images", "scenarios")
# Debris that must not reach the wheel, and would be copied into a build tree if not skipped.
JUNK_NAMES = {"__pycache__", ".pytest_cache"}
JUNK_SUFFIXES = (".o", ".pyc")
# What only exists in a working checkout; skipped when the source tree is copied for the build.
CHECKOUT_ONLY = {".git", ".venv", "build", "dist", "artifacts"}
PIP_TIMEOUT = 900  # a cold pip cache downloads paramiko, pytest and their dependencies


@dataclass
class Installed:
    """A wheel of the repository, installed into its own virtualenv."""

    wheel: Path
    venv: Path
    bin: Path
    site_packages: Path
    seconds: float  # building the wheel, creating the venv and installing, together

    def env(self) -> dict[str, str]:
        """The environment of a shell that activated the venv: its bin first on PATH, and nothing
        that could lead Python back to the checkout (PYTHONPATH, another VIRTUAL_ENV)."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(self.venv)
        return env

    def run(self, argv: list[str], cwd: Path, timeout: float = 600,
            check: bool = False) -> subprocess.CompletedProcess:
        """Run ``argv`` in ``cwd`` with the venv activated; ``argv[0]`` is looked up in the venv's
        bin first (``python``, ``sockredir-lab``, ``pytest``), then on PATH."""
        program = self.bin / argv[0]
        argv = [str(program) if program.exists() else argv[0], *argv[1:]]
        proc = subprocess.run(argv, cwd=cwd, env=self.env(), capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(_failure(argv, proc))
        return proc


def _failure(argv: list[str], proc: subprocess.CompletedProcess) -> str:
    return (f"{' '.join(map(str, argv))} exited {proc.returncode}\n"
            f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}")


def _run(argv: list[str], what: str, cwd: Path | None = None) -> None:
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=PIP_TIMEOUT)
    if proc.returncode != 0:
        raise AssertionError(f"{what} failed; run the command by hand to see why.\n{_failure(argv, proc)}")


def _ignore_checkout_only(directory: str, names: list[str]) -> set[str]:
    top = Path(directory) == REPO
    return {n for n in names
            if (top and n in CHECKOUT_ONLY) or n in JUNK_NAMES or n.endswith(".egg-info")
            or n.endswith(JUNK_SUFFIXES)}


def _is_junk(path: Path) -> bool:
    return bool(JUNK_NAMES & set(path.parts)) or path.name.endswith(JUNK_SUFFIXES)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    """Build the wheel of the repository and install it into a fresh virtualenv outside it.

    The build runs on a copy of the work tree (symlinks kept as symlinks, checkout-only and junk
    files left out): setuptools reuses ``build/`` between in-tree builds, so a file deleted from
    the repository could still reach a wheel built in place. The venv is plain (no system site
    packages), so the installed copy has only what the wheel and its declared dependencies bring.
    """
    root = tmp_path_factory.mktemp("installed").resolve()
    if root.is_relative_to(REPO):
        pytest.fail(f"the temporary directory {root} is inside the repository; pass a --basetemp outside it")
    started = time.monotonic()
    source = root / "source"
    shutil.copytree(REPO, source, symlinks=True, ignore=_ignore_checkout_only)
    wheels = root / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", wheels, source], "building the wheel")
    (wheel,) = wheels.glob("sockredir_lab-*.whl")
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", venv], "creating the virtualenv")
    _run([venv / "bin" / "python", "-m", "pip", "install", "-q", wheel], "installing the wheel", cwd=root)
    seconds = time.monotonic() - started
    probe = subprocess.run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                           cwd=root, capture_output=True, text=True, check=True)
    site_packages = Path(probe.stdout.strip()).resolve()
    print(f"installed {wheel.name} into {venv} in {seconds:.1f}s")
    return Installed(wheel=wheel, venv=venv, bin=venv / "bin", site_packages=site_packages, seconds=seconds)


@pytest.fixture
def outside(tmp_path) -> Path:
    """A working directory outside the repository, so nothing is found relative to the checkout."""
    assert not tmp_path.resolve().is_relative_to(REPO)
    return tmp_path


def test_wheel_carries_the_data(installed):
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    for required in ("lab/data/images/kernels.toml", "lab/data/images/kernels.lock.json",
                     "lab/data/images/guest-init.sh", "lab/data/images/initramfs-init.sh",
                     "lab/data/bpf/sockredir.bpf.c", "lab/data/bpf/vmlinux.h",
                     "lab/data/bpf/seed/sockredir_seed.bpf.c", "lab/data/scenarios/pair.py",
                     "lab/data/scenarios/tracefs.sh"):
        assert required in names, f"{required} is missing from {installed.wheel.name}"
    assert any(n.startswith("lab/data/bpf/cases/") and n.endswith(".toml") for n in names)
    # Every data file of the repository, not only the ones named above (nested directories too).
    in_repo = {f"lab/data/{p.relative_to(REPO).as_posix()}"
               for d in DATA_DIRS for p in (REPO / d).rglob("*")
               if p.is_file() and not _is_junk(p.relative_to(REPO))}
    assert in_repo - names == set()
    junk = sorted(n for n in names if _is_junk(Path(n)))
    assert junk == [], f"build debris in the wheel: {junk}"


def test_installed_cli_lists_the_kernels(installed, outside):
    proc = installed.run(["sockredir-lab", "kernels", "list"], cwd=outside)
    assert proc.returncode == 0, _failure(["sockredir-lab", "kernels", "list"], proc)
    ids = [line.split()[0] for line in proc.stdout.splitlines()[1:] if line.strip()]
    assert "6.1" in ids, proc.stdout
    # The catalog the installed copy read is its own, not the checkout's.
    assert str(installed.site_packages / "lab" / "data" / "images" / "kernels.toml") in proc.stdout
    assert str(REPO / "images") not in proc.stdout


def test_installed_lab_finds_its_data_in_site_packages(installed, outside):
    proc = installed.run(["python", "-c", "import lab; print(lab.BPF_DIR); print(lab.__file__)"],
                         cwd=outside, check=True)
    bpf_dir, module = (Path(line) for line in proc.stdout.splitlines())
    assert bpf_dir.is_relative_to(installed.site_packages), f"{bpf_dir} is not in {installed.site_packages}"
    assert not bpf_dir.is_relative_to(REPO)
    assert not Path(module).resolve().is_relative_to(REPO)
    assert (bpf_dir / "sockredir.bpf.c").is_file() and not (bpf_dir / "sockredir.bpf.c").is_symlink()


# ----------------------------------------------------------------------------- a real guest

GUEST_KERNEL = "6.1"
USER_PROJECT_TEST = '''
"""A project of its own, using the installed plugin's fixtures and lab.api (not the lab's tests)."""
import json

from lab import api


def test_guest_runs_commands(target, kernel):
    assert target.run(["uname", "-r"], check=True).stdout.strip() == kernel.release


def test_redirect_in_a_fresh_cgroup(target, cgroup):
    installed = api.install_redirect(target, cgroup)
    assert installed.variant == "production"
    status = api.redirect_status(target, cgroup)
    assert status["attached"] and status["entries"] == []


def test_own_program(target, cgroup, tmp_path):
    source = tmp_path / "count.bpf.c"
    source.write_text(COUNTER)
    with api.load(target, api.build(source)) as prog, api.netns(target) as netns:
        prog.attach_cgroup("count", cgroup)
        api.run_in(target, ["python3", "-c", CLIENT], cgroup=cgroup, netns=netns, check=True)
        assert prog.map("established").dump()[0]["formatted"]["value"] == 1


CLIENT = ("import socket; s = socket.create_server(('127.0.0.1', 0)); "
          "socket.create_connection(s.getsockname())")
COUNTER = r"""
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} established SEC(".maps");
SEC("sockops")
int count(struct bpf_sock_ops *skops)
{
    __u32 zero = 0;
    __u64 *value = bpf_map_lookup_elem(&established, &zero);
    if (value && skops->op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
        __sync_fetch_and_add(value, 1);
    return 1;
}
char LICENSE[] SEC("license") = "GPL";
"""
'''


def test_installed_shell_runs_a_command_in_a_guest(installed, outside):
    proc = installed.run(["sockredir-lab", "shell", "--kernel", GUEST_KERNEL, "--", "uname", "-r"],
                         cwd=outside, timeout=900)
    assert proc.returncode == 0, _failure(["sockredir-lab", "shell"], proc)
    assert proc.stdout.strip().endswith("-cloud-amd64") and proc.stdout.startswith("6.1."), proc.stdout


def test_a_project_of_its_own_uses_the_fixtures_and_the_api(installed, outside):
    if os.geteuid() != 0:
        pytest.skip("the project's tests load BPF programs in a guest: root only")
    (outside / "test_theirs.py").write_text(USER_PROJECT_TEST)
    argv = ["python", "-m", "pytest", "-p", "no:cacheprovider", "-q", "--kernel", GUEST_KERNEL,
            "test_theirs.py"]
    proc = installed.run(argv, cwd=outside, timeout=900)
    assert proc.returncode == 0, _failure(argv, proc)
    assert "3 passed" in proc.stdout, proc.stdout[-3000:]
