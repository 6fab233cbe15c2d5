"""Kernels built from source, against a small fake kernel tree whose Makefile behaves like Kbuild's
for the targets the lab runs (defconfig, olddefconfig, bzImage, modules, kernelrelease,
modules_install, all with O=): the fragments merge in order (the user's last), an option that
does not survive olddefconfig is an error naming it, an option this kernel does not define is left
out with a note, the result is cached by source and configuration, and a changed source or
fragment builds again. The real build of linux-source-6.1 is tests/integration/test_kernel_from_source.py."""

from __future__ import annotations

import textwrap

import pytest

from lab import LabError
from lab.kernel import build
from lab.kernel.catalog import Catalog, source_from_value

MAKEFILE = textwrap.dedent("""\
    # A stand-in for Kbuild: just the targets lab.kernel.build runs, out of tree in $(O).
    .PHONY: defconfig olddefconfig bzImage modules kernelrelease modules_install
    defconfig:
    \tcp $(CURDIR)/defconfig $(O)/.config
    olddefconfig:
    \t# like Kconfig: NEEDS_MISSING_DEP depends on an option nobody can set, so it is dropped
    \tsed -i '/^CONFIG_NEEDS_MISSING_DEP=/d' $(O)/.config
    \t# and, like Kconfig, drops a symbol this kernel does not define
    \tsed -i '/^CONFIG_DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT=/d' $(O)/.config
    bzImage:
    \techo build >> $(FAKE_MAKE_RUNS)
    \tmkdir -p $(O)/arch/x86/boot
    \tprintf '%*s' 514 '' | tr ' ' '\\0' > $(O)/arch/x86/boot/bzImage
    \tprintf 'HdrS' >> $(O)/arch/x86/boot/bzImage
    modules:
    \t@true
    kernelrelease:
    \t@echo 6.6.0-fake
    modules_install:
    \tmkdir -p $(INSTALL_MOD_PATH)/lib/modules/6.6.0-fake/kernel
    \ttouch $(INSTALL_MOD_PATH)/lib/modules/6.6.0-fake/modules.builtin
    \tln -s $(O) $(INSTALL_MOD_PATH)/lib/modules/6.6.0-fake/build
    """)
MERGE = textwrap.dedent("""\
    #!/bin/sh
    # stand-in for scripts/kconfig/merge_config.sh -m -O DIR BASE FRAGMENT...: later values win
    shift; shift; out=$1; shift; base=$1; shift
    cat "$base" "$@" | awk -F= '/^CONFIG_/ {v[$1]=$0; if (!($1 in seen)) {seen[$1]=1; order[n++]=$1}}
        END {for (i = 0; i < n; i++) print v[order[i]]}' > "$out/.config.merged"
    mv "$out/.config.merged" "$out/.config"
    """)


@pytest.fixture
def fake_tree(tmp_path, monkeypatch):
    monkeypatch.setenv("SOCKREDIR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(build, "missing_packages", lambda: [])
    # counted outside the tree: a file written into it would change the source's fingerprint
    monkeypatch.setenv("FAKE_MAKE_RUNS", str(tmp_path / "make-runs"))
    tree = tmp_path / "linux-6.6"
    (tree / "scripts" / "kconfig").mkdir(parents=True)
    (tree / "Makefile").write_text(MAKEFILE)
    (tree / "scripts" / "kconfig" / "merge_config.sh").write_text(MERGE)
    (tree / "defconfig").write_text("CONFIG_EXT4_FS=m\nCONFIG_NET_SOCK_MSG=n\n")
    lab_options = [item.option for item in build.parse_fragment(build.LAB_FRAGMENT)]
    symbols = [o for o in lab_options if o != "DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT"]  # a 5.15-like tree
    (tree / "Kconfig").write_text("".join(f"config {name}\n\tbool\n" for name in
                                          symbols + ["NEEDS_MISSING_DEP", "LOCALVERSION"]))
    return tree


def make_runs(tree) -> int:
    runs = tree.parent / "make-runs"
    return len(runs.read_text().splitlines()) if runs.exists() else 0


def test_fragments_merge_build_once_and_install_like_a_package(fake_tree, tmp_path):
    user = tmp_path / "mine.config"
    user.write_text("CONFIG_EXT4_FS=m\nCONFIG_LOCALVERSION=\"-mine\"\n")
    lines = []
    built = build.build_kernel(fake_tree, "6.6", user, progress=lines.append)
    assert built.release == "6.6.0-fake" and make_runs(fake_tree) == 1
    config = (built.vmlinuz.parent / "config-6.6.0-fake").read_text()
    assert "CONFIG_NET_SOCK_MSG=y" in config and "CONFIG_DEBUG_INFO_BTF=y" in config  # the lab's
    assert "CONFIG_EXT4_FS=m" in config  # the user's fragment comes last and wins over the lab's y
    assert "CONFIG_DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT" not in config
    assert any("not in this kernel, left out: CONFIG_DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT" in line
               for line in lines)
    assert not (built.modules_dir / "build").exists()  # no link back into the work directory
    assert (built.modules_dir / "modules.dep").exists()  # depmod ran on the installed tree

    again = build.build_kernel(fake_tree, "6.6", user, progress=lines.append)
    assert again == built and make_runs(fake_tree) == 1  # cached: no second build
    assert build.cached(fake_tree, "6.6", user) == built

    user.write_text("CONFIG_EXT4_FS=y\n")  # another configuration: another build
    assert build.cached(fake_tree, "6.6", user) is None
    rebuilt = build.build_kernel(fake_tree, "6.6", user, progress=lines.append)
    assert rebuilt.key != built.key and make_runs(fake_tree) == 2


def test_a_changed_source_builds_again(fake_tree):
    first = build.build_kernel(fake_tree, "6.6", progress=lambda line: None)
    (fake_tree / "init.c").write_text("/* a change */\n")
    assert build.cached(fake_tree, "6.6") is None
    second = build.build_kernel(fake_tree, "6.6", progress=lambda line: None)
    assert second.key != first.key and make_runs(fake_tree) == 2


def test_an_option_that_does_not_survive_is_named(fake_tree, tmp_path):
    user = tmp_path / "wants.config"
    user.write_text("CONFIG_NEEDS_MISSING_DEP=y\n")
    with pytest.raises(LabError, match=r"CONFIG_NEEDS_MISSING_DEP=y \(wants.config\) ended up not set"):
        build.build_kernel(fake_tree, "6.6", user, progress=lambda line: None)


def test_bad_inputs_are_named(fake_tree, tmp_path):
    with pytest.raises(LabError, match="does not exist"):
        build.build_kernel(fake_tree, "6.6", tmp_path / "nope.config")
    with pytest.raises(LabError, match="not a kernel source tree"):
        build.build_kernel(tmp_path, "6.6")
    (tmp_path / "junk.config").write_text("this is no config\n")
    with pytest.raises(LabError, match="is not a CONFIG_X=value line"):
        build.build_kernel(fake_tree, "6.6", tmp_path / "junk.config")
    (fake_tree / ".config").write_text("CONFIG_X=y\n")
    with pytest.raises(LabError, match="mrproper"):
        build.build_kernel(fake_tree, "6.6")


def test_missing_tools_are_named_with_their_packages(fake_tree, monkeypatch):
    monkeypatch.setattr(build, "missing_packages", lambda: ["dwarves", "flex"])
    with pytest.raises(LabError, match="needs dwarves, flex. Fix: apt-get install dwarves flex"):
        build.build_kernel(fake_tree, "6.6")


def test_a_tarball_is_unpacked_once(fake_tree, tmp_path):
    import tarfile

    tarball = tmp_path / "linux-6.6.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(fake_tree, arcname="linux-6.6")
    first = build.unpacked_source(tarball, progress=lambda line: None)
    assert (first / "Kconfig").is_file() and first.name == "linux-6.6"
    assert build.unpacked_source(tarball, progress=lambda line: pytest.fail("unpacked twice")) == first


def test_a_source_tree_or_tarball_in_the_environment_is_a_build(fake_tree, tmp_path):
    entry = source_from_value("6.6", str(fake_tree), "$SOCKREDIR_KERNEL_6_6")
    assert entry.source == "build" and entry.build == fake_tree
    assert source_from_value("6.6", str(tmp_path / "linux.tar.xz"), "x").source == "build"
    catalog = tmp_path / "kernels.toml"
    catalog.write_text(f'[[kernel]]\nid = "6.6"\nbuild = "{fake_tree}"\nconfig = "mine.config"\n'
                       '[[kernel]]\nid = "x"\nsuite = "sid"\npackage = "linux-image-x"\nconfig = "a"\n')
    loaded = Catalog.load(catalog, environ={})
    assert loaded.get("6.6").config == tmp_path / "mine.config"
    assert "config without build" in str(loaded.errors[0])


def _patch(tmp_path, name: str, old: str, new: str, file: str = "net/ipv4/tcp_bpf.c"):
    patch = tmp_path / name
    patch.write_text(f"From: lab\nSubject: [PATCH] {name}\n\n---\n--- a/{file}\n+++ b/{file}\n"
                     f"@@ -1 +1 @@\n-{old}\n+{new}\n")
    return patch


def test_patches_build_a_patched_copy_and_the_pristine_source_stays(fake_tree, tmp_path):
    source = fake_tree / "net" / "ipv4" / "tcp_bpf.c"
    source.parent.mkdir(parents=True)
    source.write_text("stock\n")
    first = _patch(tmp_path, "fix.patch", "stock", "fixed")
    lines = []
    built = build.build_kernel(fake_tree, "6.6-fix", progress=lines.append, patches=[first])
    work = build.work_dir(fake_tree, "6.6-fix")
    assert (work / "patched" / "net" / "ipv4" / "tcp_bpf.c").read_text() == "fixed\n"
    assert source.read_text() == "stock\n"  # the source tree is never written
    assert any("applied fix.patch (net/ipv4/tcp_bpf.c)" in line for line in lines)
    assert build.cached(fake_tree, "6.6-fix", patches=[first]) == built
    lines.clear()
    assert build.build_kernel(fake_tree, "6.6-fix", progress=lines.append, patches=[first]) == built
    assert not any("applied" in line for line in lines)  # the same set again touches nothing
    assert build.cached(fake_tree, "6.6-fix") is None  # another patch set, another build

    second = _patch(tmp_path, "other.patch", "stock", "other")  # applies to pristine, not on top
    other = build.build_kernel(fake_tree, "6.6-fix", progress=lines.append, patches=[second])
    assert other.key != built.key and make_runs(fake_tree) == 2
    assert (work / "patched" / "net" / "ipv4" / "tcp_bpf.c").read_text() == "other\n"


def test_a_patch_that_does_not_apply_is_named_with_its_hunk(fake_tree, tmp_path):
    source = fake_tree / "net" / "ipv4" / "tcp_bpf.c"
    source.parent.mkdir(parents=True)
    source.write_text("stock\n")
    good = _patch(tmp_path, "good.patch", "stock", "fixed")
    stale = _patch(tmp_path, "stale.patch", "something else", "other")
    with pytest.raises(LabError, match=r"patch stale.patch does not apply .*Hunk #1 FAILED"):
        build.build_kernel(fake_tree, "6.6-fix", progress=lambda line: None, patches=[good, stale])
    # the copy went back to pristine: nothing half-applied is left for the next build
    work = build.work_dir(fake_tree, "6.6-fix")
    assert (work / "patched" / "net" / "ipv4" / "tcp_bpf.c").read_text() == "stock\n"
    with pytest.raises(LabError, match="does not exist"):
        build.build_kernel(fake_tree, "6.6-fix", progress=lambda line: None, patches=[tmp_path / "nope.patch"])
