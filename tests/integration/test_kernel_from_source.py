"""A kernel built from source boots and carries the redirect like a packaged one: Debian's
``linux-source-6.1`` (the source tree this machine can get) through ``sockredir-lab kernels
build``, then a catalog entry ``build = ...`` of the user's own catalog, then the repository's smoke
and redirect tests in an inner pytest run against it.

The build takes long on two cores (docs/kernels.md has the figure), so it runs with
``--kernel-build`` only; once built, the kernel is cached by source, configuration and compiler,
and a second run boots it at once. The configuration merging and the caching are unit-tested
(tests/unit/test_kernel_build.py) in every run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from inner_run import run_inner

from lab.cache import cache_dir
from lab.kernel.fetch import fetch_suite_packages

BUILD_TIMEOUT = 4 * 3600


@pytest.fixture(scope="module")
def source_tarball(request) -> Path:
    if not request.config.option.kernel_build:
        pytest.skip("building a kernel takes long on this machine (docs/kernels.md); run with "
                    "--kernel-build")
    (package, deb), = fetch_suite_packages("bookworm", "linux-source-6.1", lambda line: None)
    unpacked = cache_dir("kernels", "source-debs", package.sha256[:16])
    tarball = next(unpacked.glob("usr/src/linux-source-*.tar.xz"), None)
    if tarball is None:
        subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True)
        tarball = next(unpacked.glob("usr/src/linux-source-*.tar.xz"))
    return tarball


def test_a_kernel_built_from_source_passes_smoke_and_redirect(source_tarball, tmp_path):
    built = subprocess.run([sys.executable, "-m", "lab.cli", "kernels", "build", str(source_tarball),
                            "--id", "6.1-src"], capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    print(built.stdout[-3000:])
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    assert "kernel 6.1-src: 6.1." in built.stdout

    catalog = tmp_path / "kernels.toml"
    catalog.write_text(f'[[kernel]]\nid = "6.1-src"\nbuild = "{source_tarball}"\n')
    counts, output = run_inner(["--kernels-toml", str(catalog), "--kernel", "6.1-src",
                                "tests/integration/test_smoke.py", "tests/integration/test_redirect.py"],
                               tmp_path)
    print(counts)
    assert counts["failed"] == counts["error"] == 0, output[-6000:]
    assert counts["passed"] >= 20, (counts, output[-3000:])
