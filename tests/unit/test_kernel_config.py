"""Reading a kernel's configuration and judging its capabilities: config files shaped like real
kernels' (the cloud 6.1, a 5.10 that needs the stream parser, a kernel built without sockmap),
the IKCONFIG copy embedded in an image, and the command and plugin that use them."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import textwrap

import pytest

from lab import LabError
from lab.kernel import config as kconfig

CLOUD_6_1 = """\
CONFIG_BPF_SYSCALL=y
CONFIG_CGROUP_BPF=y
CONFIG_NET_SOCK_MSG=y
CONFIG_BPF_STREAM_PARSER=y
CONFIG_DEBUG_INFO_BTF=y
CONFIG_EVENT_TRACING=y
CONFIG_KPROBES=y
CONFIG_KPROBE_EVENTS=y
CONFIG_NET_NS=y
CONFIG_IPV6=y
CONFIG_BLK_DEV_INITRD=y
CONFIG_DEVTMPFS=y
CONFIG_VIRTIO_PCI=m
CONFIG_VIRTIO_BLK=m
CONFIG_VIRTIO_NET=m
CONFIG_EXT4_FS=y
CONFIG_LOCALVERSION="-cloud"
"""


def without(text: str, option: str) -> str:
    return text.replace(f"CONFIG_{option}=y\n", f"# CONFIG_{option} is not set\n").replace(
        f"CONFIG_{option}=m\n", f"# CONFIG_{option} is not set\n")


def verdicts(text: str, version=(6, 1)):
    return {v.capability.name: v for v in kconfig.check(kconfig.parse(text, "test", version))}


def test_a_cloud_kernel_has_everything():
    judged = verdicts(CLOUD_6_1)
    assert all(v.ok for v in judged.values()), [v.reason() for v in judged.values() if not v.ok]
    assert judged["virtio-blk"].values == {"VIRTIO_BLK": "m"}  # a module is enough to boot


def test_a_kernel_without_sockmap_is_refused_for_the_redirect_only():
    config = kconfig.parse(without(CLOUD_6_1, "NET_SOCK_MSG"), "/boot/config-6.1.0-nosockmap", (6, 1))
    judged = {v.capability.name: v for v in kconfig.check(config)}
    assert not judged["sockmap"].ok and judged["bpf"].ok and judged["ext4"].ok
    reason = kconfig.missing_reason(config, kconfig.REDIRECT)
    assert reason == ("kernel lacks sockmap: CONFIG_NET_SOCK_MSG is not set (needed for SOCKHASH, "
                      "sk_msg and bpf_msg_redirect_hash: the redirect) (/boot/config-6.1.0-nosockmap)")
    assert kconfig.missing_reason(config, ("kprobes",)) is None
    assert kconfig.missing_reason(None, kconfig.REDIRECT) is None  # unknown: the test runs


def test_the_stream_parser_matters_before_5_13_only():
    text = without(CLOUD_6_1, "BPF_STREAM_PARSER")
    assert verdicts(text, (6, 1))["sockmap"].ok
    old = verdicts(text, (5, 10))["sockmap"]
    assert not old.ok and "CONFIG_BPF_STREAM_PARSER is not set" in old.reason()
    assert "BPF_STREAM_PARSER" not in verdicts(CLOUD_6_1, (6, 1))["sockmap"].values


def test_a_builtin_only_option_set_as_module_is_named_with_its_value():
    judged = verdicts(CLOUD_6_1.replace("CONFIG_NET_SOCK_MSG=y", "CONFIG_NET_SOCK_MSG=m"))
    assert judged["sockmap"].reason().startswith("sockmap: CONFIG_NET_SOCK_MSG=m (needed for")


def test_missing_boot_options_are_boot_capabilities():
    judged = verdicts(without(without(CLOUD_6_1, "VIRTIO_BLK"), "EXT4_FS"))
    assert {name for name, v in judged.items() if not v.ok} == {"virtio-blk", "ext4"}
    assert all(judged[name].capability.boot for name in ("virtio-blk", "ext4"))


def fake_image_with_ikconfig(text: str) -> bytes:
    return b"\x7fELF" + b"\0" * 100 + kconfig.IKCONFIG_START + gzip.compress(text.encode()) + \
        kconfig.IKCONFIG_END + b"\0" * 64


def test_ikconfig_is_read_from_an_image_and_from_the_configs_module(tmp_path):
    image = tmp_path / "vmlinux"
    image.write_bytes(fake_image_with_ikconfig(CLOUD_6_1))
    assert kconfig.for_file(image, "6.1.0").values["NET_SOCK_MSG"] == "y"
    assert kconfig.embedded_config(b"no config here") is None

    modules = tmp_path / "root" / "lib" / "modules" / "6.1.0-x"
    (modules / "kernel" / "kernel").mkdir(parents=True)
    (modules / "kernel" / "kernel" / "configs.ko").write_bytes(fake_image_with_ikconfig(CLOUD_6_1))
    vmlinuz = tmp_path / "root" / "boot" / "vmlinuz-6.1.0-x"
    vmlinuz.parent.mkdir(parents=True)
    vmlinuz.write_bytes(b"not a kernel with a config")
    found = kconfig.for_tree("6.1.0-x", vmlinuz, modules)
    assert found.source.startswith("IKCONFIG of ") and found.source.endswith("configs.ko")
    assert found.version == (6, 1)
    (tmp_path / "root" / "boot" / "config-6.1.0-x").write_text(CLOUD_6_1)  # a file wins
    assert kconfig.for_tree("6.1.0-x", vmlinuz, modules).source.endswith("config-6.1.0-x")


def test_a_file_that_is_no_config_is_a_clear_error(tmp_path):
    junk = tmp_path / "junk"
    junk.write_bytes(b"\0\1\2" * 100)
    with pytest.raises(LabError, match="neither a kernel .config nor a kernel image"):
        kconfig.for_file(junk)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "lab.cli", *args], capture_output=True, text=True)


def test_kernels_check_reports_a_config_without_sockmap(tmp_path):
    config = tmp_path / "config-6.6.0-nosockmap"
    config.write_text(without(CLOUD_6_1, "NET_SOCK_MSG"))
    done = run_cli("kernels", "check", str(config))
    assert done.returncode == 1, done.stderr
    line = next(line for line in done.stdout.splitlines() if line.strip().startswith("sockmap"))
    assert "MISSING" in line and "CONFIG_NET_SOCK_MSG=n" in line
    as_json = json.loads(run_cli("kernels", "check", str(config), "--json").stdout)
    by_name = {c["name"]: c for c in as_json["capabilities"]}
    assert by_name["sockmap"]["missing"] == ["CONFIG_NET_SOCK_MSG"] and by_name["btf"]["ok"]

    good = tmp_path / "config-6.1.0-cloud"
    good.write_text(CLOUD_6_1)
    assert run_cli("kernels", "check", str(good)).returncode == 0


def test_kernels_check_of_nothing_names_the_way_out():
    done = run_cli("kernels", "check", "/nonexistent/vmlinuz")
    assert done.returncode == 2
    assert "neither a catalog id" in done.stderr and "kernel .deb, vmlinuz, .config" in done.stderr


def test_plugin_skips_a_test_whose_kernel_lacks_a_capability(pytester, tmp_path):
    """A kernel package (a real .deb, built here) whose config lacks sockmap: a test that needs
    sockmap skips before any boot, with the option named; a test that needs only BTF would run."""
    root = tmp_path / "pkg"
    release = "6.6.0-nosockmap"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(textwrap.dedent("""\
        Package: linux-image-test
        Version: 1
        Architecture: amd64
        Maintainer: lab <lab@example.org>
        Description: a kernel package for the plugin's config gate
        """))
    (root / "boot").mkdir()
    setup = bytearray(0x400)
    setup[0x202:0x206] = b"HdrS"
    (root / "boot" / f"vmlinuz-{release}").write_bytes(bytes(setup))
    (root / "boot" / f"config-{release}").write_text(without(CLOUD_6_1, "NET_SOCK_MSG"))
    (root / "lib" / "modules" / release).mkdir(parents=True)
    deb = tmp_path / "linux-image-test.deb"
    subprocess.run(["dpkg-deb", "-b", "--root-owner-group", str(root), str(deb)], check=True,
                   capture_output=True)
    pytester.makeini("[pytest]\n")
    pytester.makepyfile(test_gate=textwrap.dedent("""\
        import pytest

        @pytest.mark.requires_kernel_config("bpf", "sockmap")
        def test_needs_sockmap(target):
            raise AssertionError("must not run: the kernel has no sockmap")

        @pytest.mark.requires_kernel_config("btf")
        def test_needs_btf(kernel):
            assert kernel.release == "6.6.0-nosockmap"
        """))
    result = pytester.runpytest_subprocess(
        "--no-host", "--kernel", "6.6", f"--kernel-source=6.6={deb}",
        "-rs")
    result.assert_outcomes(skipped=1, passed=1)
    result.stdout.fnmatch_lines(["*kernel 6.6: kernel lacks sockmap: CONFIG_NET_SOCK_MSG is not set*"
                                 "kernels check 6.6*"])
