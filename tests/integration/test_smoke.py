"""Smoke tests of the lab core, once per kernel: the guest is the kernel we asked for and is usable."""

import json

import pytest

# Guest-only: these check the guest the lab built (the host has its own mounts and no catalog entry).
pytestmark = pytest.mark.usefixtures("guest")


def _mounts(target) -> dict[str, str]:
    """Mount point -> filesystem type, from the guest's /proc/self/mounts."""
    lines = target.run(["cat", "/proc/self/mounts"], check=True).stdout.splitlines()
    return {fields[1]: fields[2] for fields in (line.split() for line in lines)}


def test_uname_matches_catalog(kernel, target):
    assert target.run(["uname", "-r"], check=True).stdout.strip() == kernel.release


def test_bpf_filesystems_mounted(target):
    mounts = _mounts(target)
    assert mounts.get("/sys/fs/bpf") == "bpf"
    assert mounts.get("/sys/kernel/tracing") == "tracefs"
    assert mounts.get("/sys/fs/cgroup") == "cgroup2"


def test_bpftool_runs(target):
    version = json.loads(target.run(["bpftool", "-j", "version"], check=True).stdout)
    assert version["version"].startswith("7.")
    programs = json.loads(target.run(["bpftool", "-j", "prog", "show"], check=True).stdout)
    assert isinstance(programs, list)


def test_kernel_modules_available(kernel, target):
    # modinfo resolves through /lib/modules/<release>/modules.dep: proves the modules disk is the
    # right kernel's and depmod'ed.
    info = target.run(["modinfo", "-F", "vermagic", "dummy"], check=True).stdout
    assert info.split()[0] == kernel.release


def test_file_round_trip(target, tmp_path):
    payload = tmp_path / "payload.bin"
    payload.write_bytes(bytes(range(256)) * 4096)
    target.put(payload, "/tmp/payload.bin")
    back = tmp_path / "back.bin"
    target.get("/tmp/payload.bin", back)
    assert back.read_bytes() == payload.read_bytes()


def test_command_output_complete_with_exit_status(target):
    # Output written right before exit must all arrive with the exit status (sshd may send the
    # status before the last data), on both streams, also when large.
    for _ in range(5):
        result = target.run("seq 1 200000; echo tail-err >&2; exit 3", timeout=60)
        assert result.rc == 3
        assert result.stdout.splitlines()[-1] == "200000" and len(result.stdout.splitlines()) == 200000
        assert result.stderr == "tail-err\n"
