"""Target: the one interface everything above the VM layer is written against.

A Target runs commands and moves files. ``SSHTarget`` drives a guest over SSH (paramiko, host key
pinned to the one the image build generated); ``LocalTarget`` is the host itself (root), for fast
iteration and real performance numbers. The loader, scenarios, counters and verifier runs are written
once against this interface.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

from lab import LabError

Command = Union[str, Sequence[str]]


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

    def put_text(self, text: str, remote: str) -> None:
        self.run(["sh", "-c", 'cat > "$1"', "sh", remote], input=text, check=True)

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

    name = "host"

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

    def _run(self, cmd: str, timeout: float, input: str | None) -> Result:
        channel = None
        try:
            channel = self._transport().open_session(timeout=timeout)
            channel.exec_command(cmd)
            if input is not None:
                channel.sendall(input.encode())
            channel.shutdown_write()
            stdout, stderr = self._drain(channel, cmd, time.monotonic() + timeout, timeout)
            rc = channel.recv_exit_status()
        except socket.timeout as exc:
            raise CommandTimeout(f"command timed out after {timeout:.0f}s on {self.name}: {cmd}") from exc
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

    def _transport(self):
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            raise self._lost("before the command started", None)
        return transport

    def _lost(self, when: str, exc: BaseException | None) -> TargetLost:
        detail = f": {type(exc).__name__}: {exc}" if exc is not None else ""
        return TargetLost(f"the SSH connection to {self.name} broke {when}{detail}; the guest has "
                          f"probably crashed or been stopped (see its console log)")

    def _drain(self, channel, cmd: str, deadline: float, timeout: float) -> tuple[bytes, bytes]:
        """Read stdout and stderr until the server's EOF *and* exit status have both arrived.

        sshd may send the exit status before the last output, so stopping at the exit status can
        lose output; EOF comes after all of it.
        """
        stdout, stderr = bytearray(), bytearray()
        while True:
            got = False
            while channel.recv_ready():
                stdout += channel.recv(65536)
                got = True
            while channel.recv_stderr_ready():
                stderr += channel.recv_stderr(65536)
                got = True
            finished = (channel.eof_received or channel.closed) and channel.exit_status_ready()
            if finished and not channel.recv_ready() and not channel.recv_stderr_ready():
                return bytes(stdout), bytes(stderr)
            if time.monotonic() > deadline:
                raise CommandTimeout(f"command timed out after {timeout:.0f}s on {self.name}: {cmd}")
            if not got:
                time.sleep(0.002)

    def _sftp_client(self):
        if self._sftp is None:
            self._sftp = self._client.open_sftp()
        return self._sftp

    def put(self, local: Path, remote: str) -> None:
        self.run(["mkdir", "-p", os.path.dirname(remote) or "/"], check=True)
        try:
            self._sftp_client().put(str(local), remote)
        except FileNotFoundError as exc:
            raise LabError(f"cannot copy {local} to {self.name}:{remote}: {exc}") from exc
        except (self._paramiko.SSHException, EOFError, OSError) as exc:
            raise self._lost(f"while copying {local} to {remote}", exc) from exc

    def get(self, remote: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._sftp_client().get(remote, str(local))
        except FileNotFoundError as exc:
            raise LabError(f"{self.name} has no file {remote} to fetch") from exc
        except (self._paramiko.SSHException, EOFError, OSError) as exc:
            raise self._lost(f"while fetching {remote}", exc) from exc

    def close(self) -> None:
        if self._sftp is not None:
            self._sftp.close()
        self._client.close()
