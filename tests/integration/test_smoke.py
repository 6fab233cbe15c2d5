"""Smoke tests of the lab core, once per kernel: the guest is the kernel we asked for and is usable."""

import json

import pytest

# Guest-only: these check the guest the lab built (the host has its own mounts and no catalog entry).
pytestmark = pytest.mark.usefixtures("guest")


def _mounts(target) -> dict[str, str]:
    """Mount point -> filesystem type, from the guest's /proc/self/mounts."""
    lines = target.run(["cat", "/proc/self/mounts"], check=True).stdout.splitlines()
    return {fields[1]: fields[2] for fields in (line.split() for line in lines)}


def test_uname_matches_catalog(kernel, target):
    assert target.run(["uname", "-r"], check=True).stdout.strip() == kernel.release


def test_bpf_filesystems_mounted(target):
    mounts = _mounts(target)
    assert mounts.get("/sys/fs/bpf") == "bpf"
    assert mounts.get("/sys/kernel/tracing") == "tracefs"
    assert mounts.get("/sys/fs/cgroup") == "cgroup2"


def test_bpftool_runs(target):
    version = json.loads(target.run(["bpftool", "-j", "version"], check=True).stdout)
    assert version["version"].startswith("7.")
    programs = json.loads(target.run(["bpftool", "-j", "prog", "show"], check=True).stdout)
    assert isinstance(programs, list)


def test_kernel_modules_available(kernel, target):
    # modinfo resolves through /lib/modules/<release>/modules.dep: proves the modules disk is the
    # right kernel's and depmod'ed.
    info = target.run(["modinfo", "-F", "vermagic", "dummy"], check=True).stdout
    assert info.split()[0] == kernel.release


def test_file_round_trip(target, tmp_path):
    payload = tmp_path / "payload.bin"
    payload.write_bytes(bytes(range(256)) * 4096)
    target.put(payload, "/tmp/payload.bin")
    back = tmp_path / "back.bin"
    target.get("/tmp/payload.bin", back)
    assert back.read_bytes() == payload.read_bytes()
    target.put_text("polled\n", "/tmp/polled.txt")
    assert target.read_text("/tmp/polled.txt") == "polled\n"
    assert target.read_text("/tmp/no-such-file") is None


def test_command_output_complete_with_exit_status(target):
    # Output written right before exit must all arrive with the exit status (sshd may send the
    # status before the last data), on both streams, also when large.
    for _ in range(5):
        result = target.run("seq 1 200000; echo tail-err >&2; exit 3", timeout=60)
        assert result.rc == 3
        assert result.stdout.splitlines()[-1] == "200000" and len(result.stdout.splitlines()) == 200000
        assert result.stderr == "tail-err\n"


def test_each_command_runs_as_in_a_fresh_shell(target):
    # Commands share a few kept guest shells (images/guest-shell.sh): what one command does to its
    # shell must not reach the next, and the frame's own arguments and stdin are not the command's.
    assert target.run("cd /tmp; export LAB_LEAK=1; exit 7").rc == 7
    after = target.run('pwd; echo "${LAB_LEAK:-unset} $#"; cat', check=True)
    assert after.stdout == "/root\nunset 0\n"
    unbalanced = target.run("echo 'no closing quote")
    assert unbalanced.rc == 2 and "unexpected EOF" in unbalanced.stderr
    assert target.run("printf no-newline; printf err >&2").stdout == "no-newline"
    assert target.run(["printf", "%s", "it's \"quoted\"\n$HOME `x`"]).stdout == "it's \"quoted\"\n$HOME `x`"


def test_own_pid_is_the_commands_shell(target):
    # `echo $$ > cgroup.procs; exec ...` must move the command, not a kept shell: a command that
    # reads $$ runs in a shell of its own, whose parent is the kept shell.
    pid, ppid = target.run("echo $$ $PPID", check=True).stdout.split()
    comm = target.run(f"cat /proc/{ppid}/comm; test -e /proc/{pid} || echo gone", check=True)
    assert comm.stdout == "bash\ngone\n"


def test_commands_at_once_and_after_a_timeout(target):
    # A command runs while another waits for it (each thread gets a kept shell of its own: run one
    # after another, the waiter would time out); a timed-out command's shell is dropped, and the
    # next command gets a fresh one.
    import threading

    from lab.vm.target import CommandTimeout

    target.run(["rm", "-f", "/tmp/lab-go"], check=True)
    waited = []
    waiter = threading.Thread(target=lambda: waited.append(target.run(
        "while [ ! -e /tmp/lab-go ]; do sleep 0.05; done; echo went", timeout=60)))
    waiter.start()
    target.run(["touch", "/tmp/lab-go"], check=True)
    waiter.join()
    assert waited and waited[0].stdout == "went\n"
    with pytest.raises(CommandTimeout):
        target.run("sleep 30", timeout=1)
    assert target.run("echo alive", check=True).stdout == "alive\n"
