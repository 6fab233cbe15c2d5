"""Building BPF objects: real clang, a private cache per test."""

import shutil
import subprocess
import time

import pytest

from lab import BPF_DIR, LabError
from lab.bpf import build as bpf
from lab.bpf import redirect

pytestmark = pytest.mark.skipif(shutil.which("clang") is None, reason="clang is not installed")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SOCKREDIR_CACHE", str(tmp_path / "cache"))


def symbols(obj) -> dict[str, str]:
    """Function symbols of an object: name -> section."""
    out = subprocess.run(["llvm-objdump", "-t", str(obj)], capture_output=True, text=True, check=True).stdout
    found = {}
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 6 and "F" in fields[2:4]:
            found[fields[-1]] = fields[-3]
    return found


@pytest.mark.parametrize("variant,programs", [
    ("seed", {"bpf_sockmap": "sockops", "bpf_redir": "sk_msg"}),
    ("production", {"sredir_ops": "sockops", "sredir_msg": "sk_msg"}),
    ("netns", {"sredir_ops_ns": "sockops", "sredir_msg_ns": "sk_msg"}),
])
def test_every_variant_builds_with_its_program_names(variant, programs):
    obj = redirect.build_object(variant)
    assert obj.read_bytes()[:4] == b"\x7fELF"
    assert symbols(obj) == programs


def test_second_build_comes_from_the_cache():
    source = BPF_DIR / "sockredir.bpf.c"
    first = bpf.build(source)
    stamp = first.stat().st_mtime_ns
    time.sleep(0.01)
    assert bpf.build(source) == first
    assert first.stat().st_mtime_ns == stamp, "the cached object was rebuilt"


def test_defines_and_headers_change_the_object(tmp_path):
    source = tmp_path / "tiny.bpf.c"
    header = tmp_path / "tiny.h"
    header.write_text("#define ANSWER 1\n")
    source.write_text('#include "vmlinux.h"\n#include <bpf/bpf_helpers.h>\n#include "tiny.h"\n'
                      'SEC("sk_msg") int tiny(struct sk_msg_md *msg) { return ANSWER + TINY_EXTRA; }\n'
                      'char _license[] SEC("license") = "GPL";\n')
    plain = bpf.build(source, ["TINY_EXTRA=0"])
    other_define = bpf.build(source, ["TINY_EXTRA=1"])
    header.write_text("#define ANSWER 0\n")
    other_header = bpf.build(source, ["TINY_EXTRA=0"])
    assert len({plain, other_define, other_header}) == 3
    assert plain.read_bytes() != other_define.read_bytes()


def test_max_entries_is_compiled_in():
    small = redirect.build_object("production", max_entries=4)
    assert small != redirect.build_object("production")
    with pytest.raises(LabError, match="at least 1"):
        redirect.build_object("production", max_entries=0)


def test_compile_error_carries_clangs_message(tmp_path):
    source = tmp_path / "broken.bpf.c"
    source.write_text("int broken(void) { return undeclared_thing; }\n")
    with pytest.raises(LabError) as error:
        bpf.build(source)
    assert "use of undeclared identifier 'undeclared_thing'" in str(error.value)
    assert "broken.bpf.c" in str(error.value)


def test_missing_source_is_a_lab_error(tmp_path):
    with pytest.raises(LabError, match="does not exist"):
        bpf.build(tmp_path / "nope.bpf.c")


def non_u32_context_loads(obj) -> list[str]:
    """Loads through a register holding the context (r1 at entry, or a copy) that are not u32."""
    out = subprocess.run(["llvm-objdump", "-d", "--no-show-raw-insn", str(obj)],
                         capture_output=True, text=True, check=True).stdout
    ctx_regs, bad = set(), []
    for line in out.splitlines():
        if line.endswith(">:") and not line.split("<")[1].startswith("LBB"):
            ctx_regs = {"r1"}  # a new program: r1 is the context
        text = line.split(":", 1)[-1].strip()
        if text.endswith(" = r1") and "r1" in ctx_regs:
            ctx_regs.add(text.split(" = ")[0])
        for reg in ctx_regs:
            if "= *(u" in text and f"({reg} +" in text and "*(u32 *)" not in text:
                bad.append(text)
    return bad


def test_context_fields_are_read_four_bytes_at_a_time():
    """No 8-byte (merged remote_ip4/local_ip4) or 2-byte (remote_port) loads from the context:
    the verifier refuses both."""
    for variant in ("seed", "production", "netns"):
        assert non_u32_context_loads(redirect.build_object(variant)) == [], variant
    # The check itself sees a narrow load when there is one.
    narrow = bpf.build(BPF_DIR / "cases" / "remote_port_narrow.bpf.c")
    assert non_u32_context_loads(narrow) == ["r2 = *(u16 *)(r1 + 60)"]
