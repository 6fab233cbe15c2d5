"""What the scenario checks run in: a target, data sizes and the redirect installations they share.

``Env`` makes each installation on first use, on a fresh cgroup, and removes them all on close;
``Env.run`` runs a scenario program with tracing and keeps its JSON as an artifact. The checks
themselves are in ``lab.scenario.definitions``; ``lab.scenario.suite`` runs them on booted kernels.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from lab import HOST, LabError
from lab.bpf import cgroups
from lab.bpf import mutants
from lab.bpf import redirect
from lab.bpf.mutants import Mutant
from lab.bpf.pins import pinned_maps
from lab.bpf.program import UserProgram
from lab.scenario import trace
from lab.scenario.checks import MiB
from lab.scenario.runner import run_scenario
from lab.vm.target import Target


# ----------------------------------------------------------------------------- sizes

@dataclass(frozen=True)
class Scale:
    """Data sizes: modest in TCG guests (slow), larger on the host."""

    bulk_bytes: int
    echo_trips: int
    small_writes: int
    sendfile_bytes: int
    conns: int
    churn_conns: int
    halfclose_bytes: int
    netns_bytes: int
    datagrams: int
    slow_cap: int
    switch_conns: int
    switch_bytes: int
    switches: int       # path switches the switching scenario must at least make
    switch_pause_ms: float  # its writers' longest pause after their send queue emptied
    timeout: int


    def with_switches(self, switches: int) -> "Scale":
        """The switching scenario sized for at least ``switches`` path switches: measured here, a
        switch takes 400-500 KiB of the scenario's traffic (writes of 1 B - 1 MiB, log-uniform);
        the bytes are sized with a margin, and the check counts the switches it got."""
        per_direction = switches * BYTES_PER_SWITCH // (2 * self.switch_conns)
        switch_bytes = max(self.switch_bytes, per_direction)
        # Time for the bytes at a slow TCG guest's pace, and for every writer pause, on top of
        # the scale's own timeout (which sizes the default run).
        moved = 2 * self.switch_conns * (switch_bytes - self.switch_bytes)
        timeout = self.timeout + moved // SLOWEST_BYTES_PER_S + switches * self.switch_pause_ms // 1000
        return replace(self, switches=switches, switch_bytes=switch_bytes, timeout=int(timeout))


BYTES_PER_SWITCH = 640 * 1024
# A ceiling for hang detection, not a speed: plain TCP moves 29-41 MiB/s in a TCG guest here (bulk),
# but 10 000 switches in the 6.1 guest beside two other guests outran 16 MiB/s's 739 s (2026-12-08).
SLOWEST_BYTES_PER_S = 4 * MiB
GUEST_SCALE = Scale(bulk_bytes=16 * MiB, echo_trips=200, small_writes=1000, sendfile_bytes=4 * MiB,
                    conns=500, churn_conns=1000, halfclose_bytes=2 * MiB, netns_bytes=2 * MiB,
                    datagrams=200, slow_cap=64 * MiB, switch_conns=4, switch_bytes=2 * MiB, switches=20,
                    switch_pause_ms=20, timeout=150)
HOST_SCALE = Scale(bulk_bytes=32 * MiB, echo_trips=5000, small_writes=4000, sendfile_bytes=32 * MiB,
                   conns=1000, churn_conns=3000, halfclose_bytes=8 * MiB, netns_bytes=8 * MiB,
                   datagrams=1000, slow_cap=256 * MiB, switch_conns=8, switch_bytes=8 * MiB, switches=200,
                   switch_pause_ms=2, timeout=90)


# ----------------------------------------------------------------------------- installations

@dataclass
class Installed:
    cgroup: str
    installation: redirect.Installation
    map_pin: str
    counters_pin: str | None
    removed: bool = False


def install_build(target: Target, cgroup: str, variant: str, max_entries: int | None,
                  mutant: Mutant | None) -> redirect.Installation:
    """Like redirect.install, with the production and netns builds replaced by a mutant's."""
    if mutant is None or variant not in mutants.BASES:
        return redirect.install(target, cgroup, variant, max_entries)
    installed = redirect.install_object(target, cgroup, mutants.build(mutant, variant, max_entries), variant)
    return replace(installed, max_entries=max_entries)


class Env:
    """A target, its trace support, data sizes and the redirect installations the checks share.

    Installations are made on first use, each on a fresh cgroup, and removed by ``close``.
    ``mutant`` (``lab.bpf.mutants``) replaces every production/netns installation with that
    deliberately broken build: the checks must then fail.
    """

    def __init__(self, target: Target, scale: Scale | None = None, artifacts: Path | None = None,
                 mutant: Mutant | None = None, program: UserProgram | None = None,
                 progress: Callable[[str], None] = lambda message: None, switches: int | None = None):
        self.target = target
        self.scale = scale or (HOST_SCALE if target.name == HOST else GUEST_SCALE)
        if switches is not None:
            self.scale = self.scale.with_switches(switches)
        self.artifacts = artifacts
        self.mutant = mutant
        self.program = program  # a redirect the lab did not write: installed for every variant
        self.progress = progress
        self._installed: dict[tuple, Installed] = {}
        self._stack = contextlib.ExitStack()
        self._tracing: trace.Session | None = None
        # One loopback name prefix and one server port for every run: the trace filters select
        # them. Each round has its own network namespace, so reusing the port is safe.
        self.tag = trace.new_tag()
        self.port = random.randrange(20000, 30000)

    def __enter__(self) -> "Env":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._installed.clear()
        self._stack.close()

    @property
    def trace(self) -> trace.Support:
        return trace.support(self.target)

    @property
    def tracing(self) -> trace.Session:
        if self._tracing is None:
            self._tracing = self._stack.enter_context(trace.Session(self.target, self.tag, self.port))
        return self._tracing

    def installed(self, variant: str = "production", max_entries: int | None = None,
                  shared: bool = True) -> Installed:
        key = (variant, max_entries)
        if shared and key in self._installed and not self._installed[key].removed:
            return self._installed[key]
        cgroup = self._stack.enter_context(cgroups.dedicated(self.target))
        self._stack.callback(redirect.uninstall, self.target, cgroup)  # runs before the rmdir
        if self.program is not None:
            if max_entries is not None:
                raise LabError(f"{self.program.path}: a map size cannot be set from outside the "
                               "program (the full-map scenario is for the lab's own builds)")
            installation = self.program.install(self.target, cgroup)
        else:
            installation = install_build(self.target, cgroup, variant, max_entries, self.mutant)
        maps = pinned_maps(self.target, installation.pin_dir)
        pins = {info["type"]: f"{installation.pin_dir}/maps/{name}" for name, info in maps.items()
                if name != redirect.GUARD_COUNTERS_MAP}
        socket_map = next(f"{installation.pin_dir}/maps/{name}" for name, info in maps.items()
                          if info["type"] in redirect.SOCK_MAP_TYPES
                          and (self.program is None or self.program.map in (None, name)))
        # the lab's counters only in its own builds: another program's array means something else
        counters = pins.get("percpu_array") if self.program is None else None
        done = Installed(cgroup, installation, socket_map, counters)
        if shared:
            self._installed[key] = done
        return done

    def run(self, label: str, program: str, args: list, installed: Installed | None,
            rounds: tuple[str, ...] = ("baseline", "redirect"), **options) -> dict:
        """Run a scenario program with tracing; save its JSON as an artifact; fail on errors."""
        started = time.monotonic()
        result = run_scenario(
            self.target, program, [str(a) for a in args], installed.cgroup if installed else None,
            rounds=rounds, map_pin=installed.map_pin if installed else None,
            counters_pin=installed.counters_pin if installed else None, tag=self.tag, port=self.port,
            trace=self.tracing, timeout=self.scale.timeout, **options)
        result["lab_seconds"] = round(time.monotonic() - started, 3)
        if self.artifacts is not None:
            self.artifacts.mkdir(parents=True, exist_ok=True)
            (self.artifacts / f"{label}.json").write_text(json.dumps(result, indent=1))
        return result
