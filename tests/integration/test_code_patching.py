"""A guest survives the tracing the lab does: under QEMU's TCG a vCPU can run an int3 that
text_poke_bp already wrote back while another vCPU patches the code, and the kernel oopses. The
scenarios' tracing re-registered the scheduler's probes for every pid filter, which patched the
hottest call sites (try_to_wake_up, __schedule) each time: scenarios/code_patching.sh, 1000 such
cycles beside two processes waking each other, oopsed 5.10, 6.1, 6.12 (Debian's and a build from
source), 7.2 within seconds here (2026-12-08). images/guest-init.sh holds two pid filters from boot,
so the call sites stay on the probe iterator and nothing is patched: the same script then runs to
its end. On the default guest (two vCPUs), 300 cycles."""

from __future__ import annotations

import pytest

from lab import SCENARIOS_DIR, DEFAULT_KERNEL

CYCLES = 300


@pytest.mark.fresh_guest(cpus=2)
def test_re_registering_the_scheduler_probes_patches_nothing(kernel, request):
    if kernel.id != DEFAULT_KERNEL:
        pytest.skip(f"the guest image's own set-up, proven on the {DEFAULT_KERNEL} guest")
    own = request.getfixturevalue("own_guest")
    script = (SCENARIOS_DIR / "code_patching.sh").read_text()
    result = own.target.run(["env", f"N={CYCLES}", "sh", "-c", script], timeout=300)
    assert result.stdout.strip().endswith(f"done {CYCLES} patch cycles"), result.stdout + result.stderr
    assert own.alive and "Oops: int3" not in own.console_tail(200)
