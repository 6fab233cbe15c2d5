"""lab.vm.dmesg: kernel splats fail a test unless the allow-list accepts them on that kernel, and an
accepted splat never hides another one."""

from __future__ import annotations

import re

import pytest

from lab import LabError
from lab.vm import dmesg
from lab.vm.dmesg import AllowedSplat, load_allowed, scan

KNOWN = """\
[   12.1] sockredir: something ordinary
[   13.0] WARNING: CPU: 1 PID: 311 at net/core/skmsg.c:712 sk_psock_destroy+0x3b/0x40
[   13.0] Modules linked in: virtio_net
[   13.0] Call Trace:
[   13.0]  <TASK>
[   13.0] ---[ end trace 0000000000000000 ]---
"""
NEW = """\
[   14.2] BUG: kernel NULL pointer dereference, address: 0000000000000008
[   14.2] Oops: 0000 [#1] PREEMPT SMP NOPTI
[   14.2] Call Trace:
"""
ALLOW_SKMSG = AllowedSplat(("7.2",), re.compile(r"WARNING: .* at net/core/skmsg\.c:\d+ sk_psock_destroy"),
                           "known on 7.2, report X")


def test_every_splat_fails_without_an_allow_list():
    assert scan(KNOWN + NEW).splats == [
        "[   13.0] WARNING: CPU: 1 PID: 311 at net/core/skmsg.c:712 sk_psock_destroy+0x3b/0x40",
        "[   13.0] Call Trace:",
        "[   14.2] BUG: kernel NULL pointer dereference, address: 0000000000000008",
        "[   14.2] Oops: 0000 [#1] PREEMPT SMP NOPTI",
        "[   14.2] Call Trace:"]


def test_an_accepted_splat_is_reported_and_does_not_hide_a_new_one():
    found = scan(KNOWN + NEW, "7.2", [ALLOW_SKMSG])
    assert [line for line, _ in found.accepted] == [
        "[   13.0] WARNING: CPU: 1 PID: 311 at net/core/skmsg.c:712 sk_psock_destroy+0x3b/0x40",
        "[   13.0] Call Trace:"]
    assert all(why == "known on 7.2, report X" for _, why in found.accepted)
    assert found.splats == NEW.rstrip("\n").split("\n")  # the new one still fails, call trace and all


def test_an_entry_applies_to_its_kernels_only():
    assert scan(KNOWN, "6.1", [ALLOW_SKMSG]).splats != []
    everywhere = AllowedSplat(("*",), ALLOW_SKMSG.pattern, "everywhere")
    assert scan(KNOWN, "6.1", [everywhere]).splats == []


def test_the_labs_own_list_loads_and_accepts_nothing_unexplained():
    for entry in load_allowed():
        assert entry.reason.strip() and entry.kernels


def test_an_allow_list_is_read_from_toml(tmp_path):
    path = tmp_path / "allowed.toml"
    path.write_text('[[splat]]\nkernels = ["7.2"]\n'
                    "pattern = 'WARNING: .* at net/core/skmsg\\.c:\\d+ sk_psock_destroy'\n"
                    'reason = "known on 7.2"\n')
    (entry,) = load_allowed(path)
    assert scan(KNOWN, "7.2", [entry]).splats == []


@pytest.mark.parametrize("body, message", [
    ('[[splat]]\nkernels = "7.2"\npattern = "x"\nreason = "r"\n', "`kernels` must be a list"),
    ('[[splat]]\nkernels = ["7.2"]\npattern = "("\nreason = "r"\n', "`pattern` is not a regular expression"),
    ('[[splat]]\nkernels = ["7.2"]\npattern = "x"\n', "`reason` must say why"),
    ('[[splat]\n', "splat allow-list"),
])
def test_a_bad_entry_is_named(tmp_path, body, message):
    path = tmp_path / "allowed.toml"
    path.write_text(body)
    with pytest.raises(LabError, match=re.escape(message)):
        load_allowed(path)
    assert str(path) in str(pytest.raises(LabError, load_allowed, path).value)


def test_the_default_file_is_the_images_one():
    assert dmesg.ALLOWED_PATH.name == "splats-allowed.toml" and dmesg.ALLOWED_PATH.exists()
