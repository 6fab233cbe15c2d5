"""``sockredir-lab kernels list|fetch`` with a user-provided kernel (no network)."""

from __future__ import annotations

from lab.kernel.catalog import CATALOG_PATH, Catalog
from lab.cli import main
from test_kernels_fetch import RELEASE, kernel_deb


def test_fetch_and_list_a_user_kernel(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SOCKREDIR_CACHE", str(tmp_path / "cache"))
    deb = kernel_deb(tmp_path)

    assert main(["kernels", "fetch", "--id", "9.9", "--kernel", f"9.9={deb}"]) == 0
    out = capsys.readouterr().out
    assert f"9.9: {RELEASE}" in out and "extracting 1 package(s)" in out

    monkeypatch.setenv("SOCKREDIR_KERNEL_9_9", str(deb))
    monkeypatch.delenv("SOCKREDIR_KERNEL_5_15", raising=False)
    assert main(["kernels", "list"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert f"cached: {RELEASE}" in rows["9.9"] and "$SOCKREDIR_KERNEL_9_9" in rows["9.9"]
    assert "unavailable: kernel 5.15 image not provided" in rows["5.15"]
    assert set(Catalog.load(CATALOG_PATH, environ={}).ids) <= set(rows)


def test_fetch_rejects_a_malformed_override(capsys):
    assert main(["kernels", "fetch", "--kernel", "5.15"]) == 2
    assert "expected ID=PATH_OR_URL" in capsys.readouterr().err
