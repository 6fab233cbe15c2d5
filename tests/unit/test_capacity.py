"""lab.vm.capacity: the number of guests run at once follows the CPUs and the memory."""

from __future__ import annotations

import subprocess
import sys

from lab.vm.capacity import GUEST_BUDGET_MB, GUEST_CPUS, Capacity, available_mb


def test_one_guest_per_cpu_when_memory_allows():
    assert Capacity(cpus=2, available_mb=24_000).guests == 2
    assert Capacity(cpus=16, available_mb=64_000).guests == 16


def test_memory_bounds_the_guests():
    assert Capacity(cpus=16, available_mb=3 * GUEST_BUDGET_MB + 10).guests == 3


def test_at_least_one_guest():
    assert Capacity(cpus=4, available_mb=100).guests == 1


def test_guests_side_by_side_share_the_cpus_without_overcommitting():
    two_cores = Capacity(cpus=2, available_mb=24_000)
    assert two_cores.guest_cpus(1) == GUEST_CPUS == 2
    assert two_cores.guest_cpus(2) == 1
    assert two_cores.guest_cpus(3) == 1  # never none
    assert Capacity(cpus=16, available_mb=64_000).guest_cpus(4) == GUEST_CPUS  # no more than a guest's own


def test_available_memory_is_read_from_meminfo(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemAvailable:    4194304 kB\n")
    assert available_mb(str(meminfo)) == 4096


def test_the_module_prints_the_number_and_why():
    done = subprocess.run([sys.executable, "-m", "lab.vm.capacity"], capture_output=True, text=True,
                          check=True)
    assert int(done.stdout) >= 1
    assert "guest(s) at once" in done.stderr
