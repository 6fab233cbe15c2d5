"""The guest watchdog's judgement (lab/vm/watchdog.py) with stand-ins for QEMU and the guest: a
VM QEMU no longer runs, or a guest that lets a command wait and does not answer a probe, is given
up with its state captured; a busy guest that answers, or one whose QEMU has ended, is left alone."""

from __future__ import annotations

import time

from lab.vm import watchdog


class Stand:
    def __init__(self, status="running", oldest=None, answers=True, alive=True):
        self.state, self.oldest, self.answering, self.living = status, oldest, answers, alive
        self.given_up = []
        self.probes = 0

    def status(self):
        if isinstance(self.state, Exception):
            raise self.state
        return self.state

    def answers(self, timeout):
        self.probes += 1
        return self.answering

    def dog(self, tmp_path):
        return watchdog.Watchdog(lambda: self.living, self.status, lambda: "RAX=0000000000000000",
                                 lambda: self.oldest, self.answers, lambda: "[ 1.0] console line",
                                 lambda: "task:sshd state:D", tmp_path, self.given_up.append)


def test_a_running_guest_is_left_alone_and_not_probed_without_a_waiting_command(tmp_path):
    stand = Stand(oldest=3.0)
    assert stand.dog(tmp_path).check() is None
    assert stand.probes == 0 and not (tmp_path / watchdog.CAPTURE_NAME).exists()


def test_a_paused_vm_is_lost_with_its_registers_and_console_captured(tmp_path):
    dog = Stand(status="paused").dog(tmp_path)
    assert dog.check() == "QEMU reports the VM 'paused', not running"
    capture = dog.capture.read_text()
    assert "RAX=0000000000000000" in capture and "console line" in capture and "QEMU status ---\npaused" in capture
    assert "task dump (sysrq 9, l, t) ---\n(not asked: the VM is not running)" in capture


def test_a_running_guest_that_does_not_answer_is_asked_for_its_task_dump(tmp_path):
    dog = Stand(oldest=watchdog.PROBE_AFTER + 1, answers=False).dog(tmp_path)
    assert dog.check()
    assert "task dump (sysrq 9, l, t) ---\ntask:sshd state:D" in dog.capture.read_text()


def test_a_long_wait_makes_it_ask_the_guest_and_a_silent_guest_is_lost(tmp_path):
    answering = Stand(oldest=watchdog.PROBE_AFTER + 1)
    assert answering.dog(tmp_path).check() is None and answering.probes == 1
    silent = Stand(oldest=watchdog.PROBE_AFTER + 1, answers=False)
    assert silent.dog(tmp_path).check().startswith(f"a command has waited {watchdog.PROBE_AFTER + 1} s")


def test_a_monitor_that_fails_is_lost_only_while_qemu_lives(tmp_path):
    assert Stand(status=OSError("connection refused")).dog(tmp_path).check().startswith(
        "its QMP monitor did not answer")
    assert Stand(status=OSError("gone"), alive=False).dog(tmp_path).check() is None


def test_the_thread_gives_the_guest_up_once_with_its_state_captured(tmp_path, monkeypatch):
    monkeypatch.setattr(watchdog, "CHECK_SECONDS", 0.01)
    stand = Stand(status="paused")
    dog = stand.dog(tmp_path).start()
    dog._thread.join(5)
    assert stand.given_up == ["QEMU reports the VM 'paused', not running"]
    assert (tmp_path / watchdog.CAPTURE_NAME).read_text().startswith("why: QEMU reports the VM 'paused'")


def test_a_qemu_that_never_answers_its_monitor_is_lost_and_never_blocks_the_capture(tmp_path, monkeypatch):
    # A QEMU stopped whole (SIGSTOP) accepts the QMP connection and never greets.
    monkeypatch.setattr(watchdog, "PROBE_SECONDS", 0.2)
    stand = Stand()
    stand.status = lambda: time.sleep(30)
    dog = stand.dog(tmp_path)
    started = time.monotonic()
    assert dog.check().startswith("its QMP monitor did not answer (no answer within 0 s)")
    assert time.monotonic() - started < 2
    assert "(could not be read: TimeoutError" in dog.capture.read_text()
