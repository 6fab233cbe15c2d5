"""SSHTarget's file calls: a connection that died under an sftp call is TargetLost (the guest's
business, named), never paramiko's raw OSError "Socket is closed" (seen as an internal error when
a guest panicked during a suite's cgroup cleanup); other file errors stay the lab's clear errors."""

from __future__ import annotations

import paramiko
import pytest

from lab import LabError
from lab.vm.target import SSHTarget, TargetLost


class Transport:
    def __init__(self, active: bool) -> None:
        self.active = active

    def is_active(self) -> bool:
        return self.active


class Client:
    def __init__(self, sftp, active: bool = True) -> None:
        self.sftp, self.transport = sftp, Transport(active)

    def open_sftp(self):
        return self.sftp

    def get_transport(self):
        return self.transport


class Sftp:
    def __init__(self, error: BaseException | None) -> None:
        self.error = error

    def stat(self, remote):
        if self.error:
            raise self.error
        return paramiko.SFTPAttributes()


def target(error: BaseException | None, active: bool = True) -> SSHTarget:
    made = object.__new__(SSHTarget)
    made._paramiko, made.name, made._sftp = paramiko, "guest-6.12", None
    made._client = Client(Sftp(error), active)
    return made


def test_a_socket_closed_under_a_stat_is_the_guest_lost():
    with pytest.raises(TargetLost, match="guest-6.12 broke while looking for /sys/fs/cgroup/lab"):
        target(OSError("Socket is closed")).is_dir("/sys/fs/cgroup/lab")


def test_any_os_error_of_a_dead_transport_is_the_guest_lost():
    with pytest.raises(TargetLost):
        target(OSError("Broken pipe"), active=False).exists("/x")
    with pytest.raises(TargetLost):
        target(EOFError()).exists("/x")


def test_a_missing_file_is_none_and_other_errors_name_the_file():
    assert target(FileNotFoundError()).exists("/x") is False
    with pytest.raises(LabError, match="cannot look at guest-6.12:/x: Permission denied") as raised:
        target(PermissionError("Permission denied")).exists("/x")
    assert not isinstance(raised.value, TargetLost)
