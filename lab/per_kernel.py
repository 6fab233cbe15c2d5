"""The one per-kernel loop of the commands that work kernel by kernel (``suite``, ``conformance``,
``mutants``, ``bench redirect``, ``verify``).

``resolve`` turns a command's ``--kernel ID|host|all`` into kernel ids once, the same way for every
command. ``run_each`` then takes the kernels in turn: boots the guest (or takes the host), runs the
command's work on its target, reads the guest's dmesg for kernel splats against the allow-list
(a splat fails the kernel as it fails a pytest test; an accepted one is reported, never dropped),
and turns a ``LabError`` (a kernel not provided, a guest that died or stopped answering, a program
the verifier refused) into that kernel's error, so the next kernel still runs and the command's
output says what happened to each. A bug (any other exception) is not caught here: the command's
error boundary reports it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Generic, Iterator, TypeVar

from lab import LabError, api
from lab.kernel.fetch import KernelUnavailable
from lab.vm import dmesg as dmesg_mod
from lab.vm.target import Target

Result = TypeVar("Result")


@dataclass
class KernelRun(Generic[Result]):
    """What happened on one kernel: the work's result, or why there is none."""

    kernel: str
    release: str = ""
    accel: str = ""                   # kvm, tcg, or native for the host
    result: Result | None = None      # what the command's work returned
    error: str | None = None          # the kernel could not be run to the end
    unavailable: str | None = None    # not provided (e.g. 5.15 without a .deb)
    splats: list[str] = field(default_factory=list)
    accepted_splats: list[tuple[str, str]] = field(default_factory=list)  # (line, why it is accepted)
    seconds: float = 0.0

    @property
    def problem(self) -> str | None:
        """Why this kernel's result cannot be trusted as it is, or None."""
        if self.unavailable or self.error:
            return self.unavailable or self.error
        if self.splats:
            return f"kernel splat in dmesg: {self.splats[0]}" + (
                f" (and {len(self.splats) - 1} more lines)" if len(self.splats) > 1 else "")
        return None

    def as_dict(self) -> dict:
        """The record without the result (each command adds its result in its own words)."""
        return {"kernel": self.kernel, "release": self.release, "accel": self.accel, "error": self.error,
                "unavailable": self.unavailable, "splats": self.splats,
                "accepted_splats": [{"line": line, "reason": why} for line, why in self.accepted_splats],
                "seconds": round(self.seconds, 1)}


def resolve(requested: list[str], settings: api.Settings, default: list[str] | None = None) -> list[str]:
    """Kernel ids from ``--kernel`` values: catalog ids, ``host``, ``all`` (every kernel the catalog
    provides, then the host; the ones not provided are named on the progress stream). An id the
    catalog does not know is an error naming the known ones."""
    catalog = settings.catalog()
    ids: list[str] = []
    for kernel in requested or default or [api.HOST]:
        if kernel == "all":
            for entry in catalog.entries:
                reason = entry.unavailable_reason()
                if reason:
                    settings.progress(f"skipping kernel {entry.id}: {reason}")
                else:
                    ids.append(entry.id)
            ids.append(api.HOST)
        elif kernel == api.HOST or catalog.find(kernel):
            ids.append(kernel)
        else:
            raise LabError(f"--kernel {kernel}: not in the catalog (known: {', '.join(catalog.ids)}, "
                           f"or `all`, or `host`)")
    return list(dict.fromkeys(ids))


def run_each(kernels: list[str], settings: api.Settings, work: Callable[[str, Target], Result], *,
             artifacts_of: Callable[[str], Path | None] = lambda kernel: None,
             allowed_splats: list[dmesg_mod.AllowedSplat] | None = None) -> Iterator[KernelRun[Result]]:
    """For each kernel in turn, ``work(kernel, target)`` on it; yields the kernel's ``KernelRun`` as soon
    as it is done, so the command can print and save what it has before the next kernel boots.
    ``artifacts_of(kernel)``: a directory for the guest's console and QEMU logs (``guest/``) and
    its dmesg (``dmesg.txt``); None keeps them in a temporary directory, removed after."""
    allowed = dmesg_mod.load_allowed() if allowed_splats is None else allowed_splats
    for kernel in kernels:
        run: KernelRun[Result] = KernelRun(kernel)
        started = time.monotonic()
        try:
            if kernel == api.HOST:
                _on_host(run, settings, work)
            else:
                _on_guest(run, settings, work, artifacts_of(kernel), allowed)
        except KernelUnavailable as exc:
            run.unavailable = str(exc)
        except LabError as exc:
            run.error = str(exc)
        run.seconds = time.monotonic() - started
        _report(run, settings.progress)
        yield run


def _report(run: KernelRun, progress: Callable[[str], None]) -> None:
    """A kernel's problem and its accepted splats, on the progress stream as soon as it is done."""
    if run.problem:
        progress(f"kernel {run.kernel}: {run.problem}")
    for line, why in run.accepted_splats:
        progress(f"kernel {run.kernel}: accepted splat: {line} ({why})")


def _on_host(run: KernelRun, settings: api.Settings, work: Callable[[str, Target], Result]) -> None:
    # The host's dmesg is the machine's, not this run's: it is not judged.
    target = api.host()
    run.release, run.accel = target.kernel_release, "native"
    settings.progress(f"the host ({run.release}): ready")
    run.result = work(run.kernel, target)


def _on_guest(run: KernelRun, settings: api.Settings, work: Callable[[str, Target], Result],
              artifacts: Path | None, allowed: list[dmesg_mod.AllowedSplat]) -> None:
    if artifacts is not None:
        artifacts.mkdir(parents=True, exist_ok=True)
    with api.guest(run.kernel, settings, artifacts / "guest" if artifacts else None) as guest:
        target = guest.target
        run.release, run.accel = target.kernel_release, guest.accel.name
        try:
            target.run(["dmesg", "-c"], timeout=30)  # the boot's messages are not the work's
            settings.progress(f"kernel {run.kernel} ({run.release}, {run.accel}): ready")
            run.result = work(run.kernel, target)
        except LabError as exc:
            run.error = str(exc)
            guest.give_up_if_lost(exc)
        if guest.alive:  # a splat is often why the work failed: read dmesg still
            try:
                _scan_dmesg(run, target, artifacts, allowed)
            except LabError as exc:
                run.error = run.error or str(exc)
                guest.give_up_if_lost(exc)
        if not guest.alive:  # also when the work carried on past its own errors (mutants do)
            run.error = (run.error or "the guest was lost during the work") + f" ({guest.death().splitlines()[0]})"


def _scan_dmesg(run: KernelRun, target: Target, artifacts: Path | None,
                allowed: list[dmesg_mod.AllowedSplat]) -> None:
    text = target.run(["dmesg"], timeout=30).stdout
    if artifacts is not None:
        (artifacts / "dmesg.txt").write_text(text)
    found = dmesg_mod.scan(text, run.kernel, allowed)
    run.splats, run.accepted_splats = found.splats, found.accepted
