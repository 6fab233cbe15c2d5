"""How many guests this machine runs at once (the default parallelism of ``./run test`` and
``sockredir-lab matrix``), and how many vCPUs each of them gets.

    python -m lab.vm.capacity        # prints the number, then why on stderr

One guest per CPU the lab may use (a TCG guest keeps a core busy while it works, and most of a
test's time is a guest working or waiting for an SSH round trip), and no more than the available
memory holds: each guest's RAM plus what QEMU needs beside it (TCG's translation cache, device
state), budgeted at GUEST_BUDGET_MB in all.

A guest has GUEST_CPUS vCPUs when the cores allow, and fewer when guests share them: guests at
once x vCPUs stays within the CPUs. Overcommitted TCG vCPUs are slow, not just shared: a vCPU
thread that wakes another waits for a core, and a guest's client and server threads do that on
every message. Measured on 2 cores, two guests running the scenario and redirect tests: 2 vCPUs
each 213-268 s of CPU, 1 vCPU each 173-198 s; the whole matrix -j 2: 1262 s -> 940 s of CPU.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

GUEST_BUDGET_MB = 2048  # 1 GiB of guest RAM (lab.vm.guest) + QEMU's own, measured at ~300-600 MiB
GUEST_CPUS = 2  # a guest's vCPUs when it has the cores to itself (lab.vm.guest's default)


@dataclass(frozen=True)
class Capacity:
    cpus: int
    available_mb: int

    @property
    def guests(self) -> int:
        return max(1, min(self.cpus, self.available_mb // GUEST_BUDGET_MB))

    def guest_cpus(self, at_once: int) -> int:
        """vCPUs for each of ``at_once`` guests running side by side: GUEST_CPUS, or the cores'
        share when that is less (at least one)."""
        return max(1, min(GUEST_CPUS, self.cpus // max(1, at_once)))

    def explain(self) -> str:
        return (f"{self.guests} guest(s) at once: {self.cpus} CPU(s) usable, "
                f"{self.available_mb} MiB available, {GUEST_BUDGET_MB} MiB per guest")


def available_mb(meminfo: str = "/proc/meminfo") -> int:
    with open(meminfo) as lines:
        for line in lines:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    raise ValueError(f"{meminfo} has no MemAvailable line")


def this_machine() -> Capacity:
    return Capacity(cpus=len(os.sched_getaffinity(0)), available_mb=available_mb())


if __name__ == "__main__":
    capacity = this_machine()
    print(capacity.guests)
    print(f"lab.vm.capacity: {capacity.explain()}", file=sys.stderr)
