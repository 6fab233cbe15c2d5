"""Module resolution as modprobe does it, from synthetic metadata shaped like real kernels': the
cloud kernels' (virtio modules only) and Debian's generic 6.1 (ext4 -> softdep crypto-crc32c ->
alias of crc32c_intel and crc32c_generic), plus built-ins, compressed names and the errors."""

from __future__ import annotations

import pytest

from lab import LabError
from lab.kernel.modules import (ModuleIndex, module_name, parse_builtin_modinfo_aliases,
                                parse_modules_softdep)


def modules_tree(tmp_path, dep: str, builtin: str = "", alias: str = "", softdep: str = "",
                 builtin_modinfo: bytes = b""):
    for name, text in (("modules.dep", dep), ("modules.builtin", builtin), ("modules.alias", alias),
                       ("modules.softdep", softdep)):
        (tmp_path / name).write_text(text)
    (tmp_path / "modules.builtin.modinfo").write_bytes(builtin_modinfo)
    return tmp_path


def resolve(tree, wanted, kernel=""):
    return ModuleIndex.read(tree, kernel).resolve(list(wanted))


def names(order):
    return [load.name for load in order]


DEP_6_1_CLOUD = """\
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/net/core/failover.ko:
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
"""

# Debian's linux-image-6.1.0-50-amd64 (generic): ext4, jbd2 and crc32c are modules.
DEP_6_1_GENERIC = DEP_6_1_CLOUD + """\
kernel/arch/x86/crypto/crc32c-intel.ko:
kernel/crypto/crc32c_generic.ko:
kernel/lib/crc16.ko:
kernel/fs/mbcache.ko:
kernel/fs/jbd2/jbd2.ko:
kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
"""
ALIAS_6_1_GENERIC = """\
alias crypto-crc32c-intel crc32c_intel
alias crc32c-intel crc32c_intel
alias crypto-crc32c crc32c_intel
alias crc32c crc32c_intel
alias crypto-crc32c-generic crc32c_generic
alias crypto-crc32c crc32c_generic
alias crc32c crc32c_generic
alias fs-ext4 ext4
alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
"""
SOFTDEP_6_1_GENERIC = """\
# Soft dependencies extracted from modules themselves.
softdep ext4 pre: crypto-crc32c
softdep jbd2 pre: crypto-crc32c
softdep libcrc32c pre: crc32c
"""
BOOT = ["virtio_pci", "virtio_blk", "virtio_net", "ext4"]


def test_cloud_kernel_dependencies_come_first_and_once(tmp_path):
    tree = modules_tree(tmp_path, DEP_6_1_CLOUD, "kernel/fs/ext4/ext4.ko\n")
    order = names(resolve(tree, BOOT))
    assert len(order) == len(set(order)) == 9
    for module, deps in [("virtio_pci", ["virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio"]),
                         ("virtio", ["virtio_ring"]),
                         ("virtio_blk", ["virtio", "virtio_ring"]),
                         ("virtio_net", ["net_failover", "failover", "virtio"]),
                         ("net_failover", ["failover"])]:
        for dep in deps:
            assert order.index(dep) < order.index(module), (dep, module, order)
    assert "ext4" not in order  # built in
    assert not any(load.optional for load in resolve(tree, BOOT))


def test_generic_kernel_gets_crc32c_before_jbd2_and_ext4(tmp_path):
    tree = modules_tree(tmp_path, DEP_6_1_GENERIC, alias=ALIAS_6_1_GENERIC, softdep=SOFTDEP_6_1_GENERIC)
    order = resolve(tree, BOOT)
    listed = names(order)
    assert len(listed) == len(set(listed))
    for first, then in [("crc32c_intel", "jbd2"), ("crc32c_generic", "jbd2"), ("jbd2", "ext4"),
                        ("crc16", "ext4"), ("mbcache", "ext4"), ("crc32c_generic", "ext4")]:
        assert listed.index(first) < listed.index(then), (first, then, listed)
    optional = {load.name for load in order if load.optional}
    assert optional == {"crc32c_intel", "crc32c_generic"}  # alternatives of an alias
    assert next(load for load in order if load.name == "ext4").path == "kernel/fs/ext4/ext4.ko"


def test_an_alias_names_a_module(tmp_path):
    tree = modules_tree(tmp_path, DEP_6_1_GENERIC, alias=ALIAS_6_1_GENERIC)
    assert names(resolve(tree, ["fs-ext4"])) == ["crc16", "mbcache", "jbd2", "ext4"]
    # a pattern with wildcards, as the PCI ids of modules.alias are
    assert "virtio_pci" in names(resolve(tree, ["pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00"]))


def test_builtin_modules_and_builtin_aliases_need_nothing(tmp_path):
    modinfo = b"crc32c_generic.alias=crypto-crc32c\0crc32c_generic.license=GPL\0ext4.alias=fs-ext4\0"
    tree = modules_tree(tmp_path, "kernel/fs/jbd2/jbd2.ko:\n", builtin="kernel/crypto/crc32c_generic.ko\n",
                        softdep="softdep jbd2 pre: crypto-crc32c\n", builtin_modinfo=modinfo)
    assert names(resolve(tree, ["jbd2", "fs-ext4", "crc32c_generic"])) == ["jbd2"]


def test_softdep_post_comes_after_and_a_missing_softdep_is_skipped(tmp_path):
    tree = modules_tree(tmp_path, "a.ko:\nb.ko:\nc.ko:\n", softdep="softdep a pre: b nothing-here post: c\n")
    order = resolve(tree, ["a"])
    assert names(order) == ["b", "a", "c"]
    assert [load.optional for load in order] == [True, False, True]


def test_compressed_modules_keep_their_paths_and_names_fold_dashes(tmp_path):
    # 6.12+: virtio_pci is built in and the modules are .ko.xz.
    dep = ("kernel/drivers/virtio/virtio_ring.ko.xz:\n"
           "kernel/drivers/virtio/virtio.ko.xz: kernel/drivers/virtio/virtio_ring.ko.xz\n"
           "kernel/drivers/block/virtio_blk.ko.xz: kernel/drivers/virtio/virtio.ko.xz "
           "kernel/drivers/virtio/virtio_ring.ko.xz\n"
           "kernel/arch/x86/crypto/crc32c-intel.ko.zst:\n")
    tree = modules_tree(tmp_path, dep, "kernel/drivers/virtio/virtio_pci.ko\nkernel/fs/ext4/ext4.ko\n")
    assert [load.path for load in resolve(tree, ["virtio_pci", "virtio_blk", "ext4"])] == [
        "kernel/drivers/virtio/virtio_ring.ko.xz", "kernel/drivers/virtio/virtio.ko.xz",
        "kernel/drivers/block/virtio_blk.ko.xz"]
    assert names(resolve(tree, ["crc32c-intel"])) == ["crc32c_intel"]
    assert module_name("kernel/x/virtio-rng.ko.gz") == "virtio_rng"


def test_missing_module_is_a_clear_error(tmp_path):
    tree = modules_tree(tmp_path, "kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko\n")
    with pytest.raises(LabError, match=r"kernel 6\.1: module virtio \(needed by virtio_blk\) is neither"):
        resolve(tree, ["virtio_blk"], kernel="6.1")
    with pytest.raises(LabError, match="module virtio_net is neither .* kernels check"):
        resolve(tree, ["virtio_net"], kernel="6.1")


def test_missing_modules_dep_says_run_depmod(tmp_path):
    with pytest.raises(LabError, match="depmod"):
        ModuleIndex.read(tmp_path)


def test_dependency_cycle_is_reported(tmp_path):
    tree = modules_tree(tmp_path, "a.ko: b.ko\nb.ko: a.ko\n")
    with pytest.raises(LabError, match="cycle a -> b -> a"):
        resolve(tree, ["a"])


def test_parsers_ignore_what_they_do_not_know():
    assert parse_modules_softdep("# comment\nsoftdep x\nsoftdep y pre: a b post: c\n") == {
        "y": (["a", "b"], ["c"])}
    assert parse_builtin_modinfo_aliases(b"x.alias=\0y.alias=z\0garbage\0") == ["z"]


def test_a_kernel_without_modules_builtin_is_told_its_missing_package(tmp_path):
    (tmp_path / "modules.dep").write_text("kernel/drivers/block/virtio_blk.ko:\n")
    with pytest.raises(LabError, match="has no modules.builtin.*linux-base"):
        resolve(tmp_path, ["virtio_pci"], kernel="7.2")
