"""sockredir-lab: eBPF socket redirection for same-host TCP, and a QEMU lab that proves it."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
BPF_DIR = REPO_ROOT / "bpf"
IMAGES_DIR = REPO_ROOT / "images"
SCENARIOS_DIR = REPO_ROOT / "scenarios"


class LabError(Exception):
    """An error the user can act on: the message names the thing and the way out."""
