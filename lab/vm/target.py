"""Target: the one interface everything above the VM layer is written against.

A Target runs commands and moves files. ``SSHTarget`` drives a guest over SSH (paramiko, host key
pinned to the one the image build generated); ``LocalTarget`` is the host itself (root), for fast
iteration and real performance numbers. The loader, scenarios, counters and verifier runs are written
once against this interface.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import secrets
import shlex
import shutil
import stat
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

from lab import HOST, IMAGES_DIR, LabError

Command = Union[str, Sequence[str]]
GUEST_SHELL_FRAME = (IMAGES_DIR / "guest-shell.sh").read_text()
RUN_DIR = "/run/sockredir-lab"  # the lab's files on a target: programs, objects, private mounts


@dataclass
class Result:
    command: str
    rc: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def check(self) -> "Result":
        if self.rc != 0:
            raise CommandError(self)
        return self


class CommandError(LabError):
    def __init__(self, result: Result, target: str = ""):
        self.result = result
        where = f" on {target}" if target else ""
        tail = (result.stderr.strip() or result.stdout.strip())[-2000:]
        super().__init__(f"command failed{where} (exit {result.rc}): {result.command}\n{tail}")


class CommandTimeout(LabError):
    pass


class TargetLost(LabError):
    """The connection to a guest broke: it crashed, was killed, or its sshd died."""


def as_shell(cmd: Command) -> str:
    return cmd if isinstance(cmd, str) else shlex.join(list(cmd))


class Target:
    """Base class: subclasses implement ``_run``, ``put`` and ``get``."""

    name = "target"
    # The kernel-fixes/ patches the kernel runs with (a guest of a kernel built with them; the host
    # and packaged kernels: none).
    kernel_patches: frozenset[str] = frozenset()

    def __init__(self) -> None:
        self._features: dict | None = None
        self._release: str | None = None
        # Facts about the target that callers look up often and that change only through the lab
        # (e.g. the mount table): each SSH round trip costs ~0.1-0.2 s in a TCG guest.
        self.memo: dict = {}

    def run(self, cmd: Command, timeout: float = 60, check: bool = False,
            input: str | None = None) -> Result:
        result = self._run(as_shell(cmd), timeout, input)
        if check and result.rc != 0:
            raise CommandError(result, self.name)
        return result

    def _run(self, cmd: str, timeout: float, input: str | None) -> Result:
        raise NotImplementedError

    def put(self, local: Path, remote: str) -> None:
        raise NotImplementedError

    def get(self, remote: str, local: Path) -> None:
        raise NotImplementedError

    def read_text(self, remote: str) -> str | None:
        """A file's text, or None when there is no such file (e.g. while polling for one)."""
        result = self.run(["cat", remote])
        return result.stdout if result.ok else None

    def put_text(self, text: str, remote: str) -> None:
        self.run(["sh", "-c", 'cat > "$1"', "sh", remote], input=text, check=True)

    def make_dirs(self, remote: str) -> None:
        """``mkdir -p``: the directory and any missing parents."""
        self.run(["mkdir", "-p", remote], check=True)

    def remove_dir(self, remote: str) -> bool:
        """``rmdir``: False when the directory could not go (not empty, busy, missing)."""
        return self.run(["rmdir", remote]).ok

    def exists(self, remote: str) -> bool:
        """``test -e``."""
        return self.run(["test", "-e", remote]).ok

    def is_dir(self, remote: str) -> bool:
        """``test -d``."""
        return self.run(["test", "-d", remote]).ok

    @property
    def kernel_release(self) -> str:
        if self._release is None:
            self._release = self.run(["uname", "-r"], check=True).stdout.strip()
        return self._release

    @property
    def features(self) -> dict:
        """``bpftool feature probe kernel -j``, probed once per target."""
        if self._features is None:
            out = self.run(["bpftool", "-j", "feature", "probe", "kernel"], timeout=300, check=True)
            self._features = parse_features(out.stdout, self.name)
        return self._features

    def has_helper(self, prog_type: str, helper: str) -> bool:
        helpers = self.features.get("helpers", {})
        return helper in helpers.get(f"{prog_type}_available_helpers", [])


FEATURE_SECTIONS = ("program_types", "map_types", "helpers")


def parse_features(output: str, where: str) -> dict:
    """``bpftool -j feature probe kernel`` output, refused when a section the lab decides by is
    missing or empty: a probe that failed must be an error, never "the kernel lacks it" (which
    would turn every redirect scenario into a skip)."""
    try:
        features = json.loads(output)
    except json.JSONDecodeError as exc:
        raise LabError(f"bpftool feature probe on {where} printed no JSON ({exc}): "
                       f"{output.strip()[:300]!r}") from None
    empty = [name for name in FEATURE_SECTIONS
             if not isinstance(features, dict) or not features.get(name)]
    if empty:
        raise LabError(f"bpftool feature probe on {where} gave no {', '.join(empty)}: the probe "
                       "failed (bpftool too old for the kernel, or no privileges); the lab does not "
                       "guess what the kernel offers")
    return features


class LocalTarget(Target):
    """The host, as root. Commands run through ``sh -c`` like on a guest."""

    name = HOST

    def _run(self, cmd: str, timeout: float, input: str | None) -> Result:
        try:
            proc = subprocess.run(["sh", "-c", cmd], input=input, capture_output=True,
                                  text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise CommandTimeout(f"command timed out after {timeout:.0f}s on host: {cmd}") from exc
        return Result(cmd, proc.returncode, proc.stdout, proc.stderr)

    def put(self, local: Path, remote: str) -> None:
        Path(remote).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, remote)

    def get(self, remote: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(remote, local)

    def read_text(self, remote: str) -> str | None:
        try:
            return Path(remote).read_text()
        except FileNotFoundError:
            return None

    def put_text(self, text: str, remote: str) -> None:
        Path(remote).write_text(text)

    def make_dirs(self, remote: str) -> None:
        Path(remote).mkdir(parents=True, exist_ok=True)

    def remove_dir(self, remote: str) -> bool:
        try:
            os.rmdir(remote)
        except OSError:
            return False
        return True

    def exists(self, remote: str) -> bool:
        return os.path.exists(remote)

    def is_dir(self, remote: str) -> bool:
        return os.path.isdir(remote)


class SSHTarget(Target):
    """A guest reached over SSH on a forwarded loopback port, its host key pinned."""

    def __init__(self, host: str, port: int, key_file: Path, host_key_line: str,
                 name: str = "guest", user: str = "root", connect_timeout: float = 20):
        super().__init__()
        import paramiko  # imported here so unit tests of other modules need no paramiko

        self._paramiko = paramiko
        self.name = name
        self._client = paramiko.SSHClient()
        key_type, key_b64 = host_key_line.split()[:2]
        host_id = f"[{host}]:{port}" if port != 22 else host
        self._client.get_host_keys().add(host_id, key_type, paramiko.PKey.from_type_string(
            key_type, __import__("base64").b64decode(key_b64)))
        # A guest whose host key differs from the image's is not ours: refuse it.
        self._client.set_missing_host_key_policy(paramiko.RejectPolicy())
        pkey = paramiko.Ed25519Key.from_private_key_file(str(key_file))
        self._client.connect(host, port=port, username=user, pkey=pkey, timeout=connect_timeout,
                             banner_timeout=connect_timeout, auth_timeout=connect_timeout,
                             allow_agent=False, look_for_keys=False)
        self._client.get_transport().set_keepalive(5)
        self._sftp = None
        self._shells_lock = threading.Lock()
        self._idle_shells: list[_KeptShell] = []
        self._in_flight: dict[object, float] = {}   # running commands -> when they started

    def _run(self, cmd: str, timeout: float, input: str | None) -> Result:
        token = object()
        with self._shells_lock:
            self._in_flight[token] = time.monotonic()
        try:
            return self._run_tracked(cmd, timeout, input)
        finally:
            with self._shells_lock:
                self._in_flight.pop(token, None)

    def oldest_command(self) -> float | None:
        """Seconds the longest-waiting command has waited so far (None: none is running): how the
        guest's watchdog (lab/vm/watchdog.py) knows when to ask whether the guest still answers."""
        with self._shells_lock:
            started = min(self._in_flight.values(), default=None)
        return None if started is None else time.monotonic() - started

    def _run_tracked(self, cmd: str, timeout: float, input: str | None) -> Result:
        if input is not None:
            return self._run_session(cmd, timeout, input)  # stdin of its own: a session of its own
        shell = self._take_shell(timeout)
        try:
            result = shell.run(cmd, timeout)
        except BaseException:
            shell.close()  # a timed-out or broken shell may still be busy: never reused
            raise
        with self._shells_lock:
            self._idle_shells.append(shell)
        return result

    def _take_shell(self, timeout: float) -> "_KeptShell":
        """An idle kept shell, or a new one (commands may run at once from several threads)."""
        with self._shells_lock:
            if self._idle_shells:
                return self._idle_shells.pop()
        try:
            channel = self._transport().open_session(timeout=timeout)
            channel.exec_command('exec "${SHELL:-/bin/sh}" -s')
            channel.sendall(GUEST_SHELL_FRAME.encode())
        except (self._paramiko.SSHException, EOFError, OSError) as exc:
            raise self._lost("while starting a shell", exc) from exc
        return _KeptShell(self, channel)

    def _run_session(self, cmd: str, timeout: float, input: str) -> Result:
        channel = None
        try:
            channel = self._transport().open_session(timeout=timeout)
            channel.exec_command(cmd)
            channel.sendall(input.encode())
            channel.shutdown_write()
            stdout, stderr = _drain(channel, lambda out, err: _session_over(channel),
                                    self._deadline_error(cmd, timeout))
            rc = channel.recv_exit_status()  # -1 when the session closed without one
        except (self._paramiko.SSHException, EOFError, OSError) as exc:
            raise self._lost(f"while running `{cmd[:200]}`", exc) from exc
        finally:
            if channel is not None:
                channel.close()
        transport = self._client.get_transport()
        if rc == -1 and (transport is None or not transport.is_active()):
            # No exit status because the session died under us (a command killed by a signal has
            # no exit status either, but its connection lives on).
            raise self._lost(f"while running `{cmd[:200]}` (no exit status)", None)
        return Result(cmd, rc, stdout.decode(errors="replace"), stderr.decode(errors="replace"))

    def _deadline_error(self, cmd: str, timeout: float) -> tuple[float, CommandTimeout]:
        return time.monotonic() + timeout, CommandTimeout(
            f"command timed out after {timeout:.0f}s on {self.name}: {cmd}")

    def _transport(self):
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            raise self._lost("before the command started", None)
        return transport

    def _lost(self, when: str, exc: BaseException | None) -> TargetLost:
        detail = f": {type(exc).__name__}: {exc}" if exc is not None else ""
        return TargetLost(f"the SSH connection to {self.name} broke {when}{detail}; the guest has "
                          f"probably crashed or been stopped (see its console log)")

    def _sftp_client(self):
        if self._sftp is None:
            self._sftp = self._client.open_sftp()
        return self._sftp

    @contextmanager
    def _sftp_call(self, when: str):
        """The sftp client, for one call: a missing file stays FileNotFoundError, other OSErrors
        (permissions, not a directory) stay OSError while the connection lives, and every error of
        a dead connection (paramiko raises SSHException, EOFError, or OSError "Socket is closed")
        becomes TargetLost."""
        try:
            yield self._sftp_client()
        except FileNotFoundError:
            raise
        except (self._paramiko.SSHException, EOFError) as exc:
            raise self._lost(when, exc) from exc
        except OSError as exc:
            transport = self._client.get_transport()
            if transport is None or not transport.is_active() or "closed" in str(exc).lower():
                raise self._lost(when, exc) from exc
            raise

    def put(self, local: Path, remote: str) -> None:
        self.make_dirs(posixpath.dirname(remote) or "/")
        try:
            with self._sftp_call(f"while copying {local} to {remote}") as sftp:
                sftp.put(str(local), remote)
        except OSError as exc:
            raise LabError(f"cannot copy {local} to {self.name}:{remote}: {exc}") from exc

    def get(self, remote: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._sftp_call(f"while fetching {remote}") as sftp:
                sftp.get(remote, str(local))
        except FileNotFoundError as exc:
            raise LabError(f"{self.name} has no file {remote} to fetch") from exc
        except OSError as exc:
            raise LabError(f"cannot fetch {self.name}:{remote} to {local}: {exc}") from exc

    # Files through the long-lived sftp-server: no process starts in the guest (an exec such as
    # `mkdir` or `cat` costs ~0.04 s of TCG guest CPU, and the lab makes hundreds per kernel).

    def make_dirs(self, remote: str) -> None:
        missing = []
        while remote not in ("", "/") and not self.exists(remote):
            missing.append(remote)
            remote = posixpath.dirname(remote)
        for directory in reversed(missing):
            try:
                with self._sftp_call(f"while making {directory}") as sftp:
                    sftp.mkdir(directory)
            except OSError as exc:
                if not self.exists(directory):  # not made by someone else meanwhile
                    raise LabError(f"cannot make directory {self.name}:{directory}: {exc}") from exc

    def remove_dir(self, remote: str) -> bool:
        try:
            with self._sftp_call(f"while removing {remote}") as sftp:
                sftp.rmdir(remote)
        except OSError:
            return False
        return True

    def exists(self, remote: str) -> bool:
        return self._sftp_stat(remote) is not None

    def is_dir(self, remote: str) -> bool:
        found = self._sftp_stat(remote)
        return found is not None and stat.S_ISDIR(found.st_mode)

    def _sftp_stat(self, remote: str):
        """The file's attributes (following symlinks), None when there is no such file."""
        try:
            with self._sftp_call(f"while looking for {remote}") as sftp:
                return sftp.stat(remote)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise LabError(f"cannot look at {self.name}:{remote}: {exc}") from exc

    def put_text(self, text: str, remote: str) -> None:
        try:
            with self._sftp_call(f"while writing {remote}") as sftp, sftp.open(remote, "w") as handle:
                handle.write(text.encode())
        except OSError as exc:
            raise LabError(f"cannot write {self.name}:{remote}: {exc}") from exc

    def read_text(self, remote: str) -> str | None:
        # Through the long-lived sftp-server: no process starts in the guest, so polling for a
        # file costs the guest next to nothing (a `cat` is an exec, ~0.04 s of TCG guest CPU).
        try:
            with self._sftp_call(f"while reading {remote}") as sftp, sftp.open(remote) as handle:
                return handle.read().decode(errors="replace")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise LabError(f"cannot read {self.name}:{remote}: {exc}") from exc

    def close(self) -> None:
        with self._shells_lock:
            shells, self._idle_shells = self._idle_shells, []
        for shell in shells:
            shell.close()
        if self._sftp is not None:
            self._sftp.close()
        self._client.close()


class _KeptShell:
    """A long-lived shell on a guest that runs one command at a time (images/guest-shell.sh)."""

    def __init__(self, owner: SSHTarget, channel) -> None:
        self._owner = owner
        self._channel = channel

    def run(self, cmd: str, timeout: float) -> Result:
        token = secrets.token_hex(16).encode()
        end_out = re.compile(re.escape(token) + rb" (\d+)\n\Z")
        end_err = token + b"\n"
        owner = self._owner

        def status_line(out: bytes):
            # Only the tail can hold it: a large output is not searched again at every poll.
            return end_out.search(out, max(0, len(out) - len(token) - 16))

        try:
            self._channel.sendall(b"lab_run " + token + b" " + shlex.quote(cmd).encode() + b"\n")
            stdout, stderr = _drain(self._channel, lambda out, err: (
                status_line(out) and err.endswith(end_err)), owner._deadline_error(cmd, timeout))
        except (owner._paramiko.SSHException, EOFError, OSError) as exc:
            raise owner._lost(f"while running `{cmd[:200]}`", exc) from exc
        except _ChannelEnded:
            # The kept shell is gone: either the connection (the guest died) or the shell alone.
            owner._transport()
            raise LabError(f"the shell running `{cmd[:200]}` on {owner.name} ended before the "
                           "command did (something killed it)") from None
        status = status_line(stdout)
        return Result(cmd, int(status[1]), stdout[:status.start()].decode(errors="replace"),
                      stderr[:-len(end_err)].decode(errors="replace"))

    def close(self) -> None:
        self._channel.close()


class _ChannelEnded(Exception):
    pass


def _session_over(channel) -> bool:
    """The server is done with the session: closed, or EOF and the exit status both arrived (sshd
    may send the status before the last output; EOF comes after all of it)."""
    return channel.closed or (channel.eof_received and channel.exit_status_ready())


def _drain(channel, finished, deadline: tuple[float, CommandTimeout]) -> tuple[bytes, bytes]:
    """Read a channel's stdout and stderr until ``finished(stdout, stderr)`` holds.

    For a session of its own that is ``_session_over``; for a kept shell, both end tokens (then a
    session that is over first raises ``_ChannelEnded``).
    """
    stdout, stderr = bytearray(), bytearray()
    when, timeout_error = deadline
    while True:
        got = False
        while channel.recv_ready():
            stdout += channel.recv(65536)
            got = True
        while channel.recv_stderr_ready():
            stderr += channel.recv_stderr(65536)
            got = True
        if got and time.monotonic() <= when:
            continue
        if finished(stdout, stderr):
            return bytes(stdout), bytes(stderr)
        if _session_over(channel):
            raise _ChannelEnded()
        if time.monotonic() > when:
            raise timeout_error
        time.sleep(0.002)
