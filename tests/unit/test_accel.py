"""The KVM/TCG decision: forced, no /dev/kvm, probe failed, probe succeeded."""

from __future__ import annotations

import pytest

from lab import LabError
from lab.vm.accel import choose


class Probe:
    def __init__(self, result: bool):
        self.result, self.calls = result, 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.result


@pytest.mark.parametrize("forced", ["kvm", "tcg"])
def test_forced_choice_wins_without_probing(forced):
    probe = Probe(forced != "kvm")  # the probe would say the opposite
    accel = choose(forced, kvm_device_usable=False, probe=probe)
    assert accel.name == forced and "forced" in accel.reason
    assert probe.calls == 0


def test_unknown_forced_value_is_an_error():
    with pytest.raises(LabError, match="SOCKREDIR_ACCEL='hvf'"):
        choose("hvf", True, Probe(True))


def test_no_kvm_device_means_tcg_without_probing():
    probe = Probe(True)
    accel = choose(None, kvm_device_usable=False, probe=probe)
    assert accel.name == "tcg" and probe.calls == 0
    assert accel.qemu_args() == ["-accel", "tcg", "-cpu", "max,-erms,-fsrm"]


def test_failed_probe_falls_back_to_tcg():
    probe = Probe(False)
    accel = choose(None, kvm_device_usable=True, probe=probe)
    assert accel.name == "tcg" and "failed" in accel.reason and probe.calls == 1


def test_successful_probe_means_kvm():
    probe = Probe(True)
    accel = choose(None, kvm_device_usable=True, probe=probe)
    assert accel.name == "kvm" and probe.calls == 1
    assert accel.qemu_args() == ["-accel", "kvm", "-cpu", "host"]
