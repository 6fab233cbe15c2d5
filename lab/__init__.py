"""sockredir-lab: eBPF socket redirection for same-host TCP, and a QEMU lab that proves it.

The lab's data (BPF sources, the kernel catalog and guest scripts, the guest-side scenario
programs) are found through this package, never relative to a checkout, so an installed copy
works from any directory. In the repository they live at the top (``bpf/``, ``images/``,
``scenarios/``, ``bench/``, ``kernel-fixes/``), where a reader looks first; ``lab/data/*`` are relative symlinks to them, which
an editable install follows and a wheel build turns into real files (package-data in
pyproject.toml).
"""

from pathlib import Path

# resolve(): in a checkout this is the real directory (bpf/, not lab/data/bpf), so the paths the lab
# prints are the files a reader edits, and they compare equal to resolved paths the user passes.
DATA_DIR = Path(__file__).resolve().parent / "data"
BPF_DIR = (DATA_DIR / "bpf").resolve()
IMAGES_DIR = (DATA_DIR / "images").resolve()
SCENARIOS_DIR = (DATA_DIR / "scenarios").resolve()
BENCH_DIR = (DATA_DIR / "bench").resolve()
KERNEL_FIXES_DIR = (DATA_DIR / "kernel-fixes").resolve()


HOST = "host"            # the kernel id of this machine's own kernel (the host column, `--kernel host`)
DEFAULT_KERNEL = "6.1"   # the guest kernel a command or test uses when none is named


class LabError(Exception):
    """An error the user can act on: the message names the thing and the way out."""
