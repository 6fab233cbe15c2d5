"""Applications through the redirect (lab/conformance/apps.py), one test per app and kernel
(``test_app[kernel_6_1-nginx]``): nginx's sendfile over keep-alive, redis pipelined and read back,
a splice(2) proxy. Each runs over plain TCP (the reference) and through the redirect, judged by
bytes; a redirect run that differs fails, unless it is exactly a known kernel defect's symptom
(then an xfail naming it).

The apps of a kernel are measured once (3 s on the host, about 25 s in a TCG guest)
and shared by its tests. By default the host and the 6.1 guest run them; ``--conformance-all`` runs
every kernel, like the conformance matrix (tests/integration/test_conformance.py).
"""

from __future__ import annotations

import pytest

from lab import api
from lab.conformance import apps
from lab.kernel.config import REDIRECT

# Every test here installs BPF programs of the redirect's kind: a kernel built without them
# skips before it boots, with the missing option named.
pytestmark = pytest.mark.requires_kernel_config(*REDIRECT)

DEFAULT_GUEST = "6.1"
_measured: dict[str, list[dict]] = {}


def records_of(kernel, lab, request) -> list[dict]:
    if kernel.id not in ("host", DEFAULT_GUEST) and not lab.config.option.conformance_all:
        pytest.skip(f"applications run on the host and {DEFAULT_GUEST} by default (about 25 s per TCG "
                    "guest); run with --conformance-all")
    target = request.getfixturevalue("target")  # after the skip: no guest boots for nothing
    if kernel.id not in _measured:
        with api.cgroup(target) as plain, api.redirected_cgroup(target) as installed:
            _measured[kernel.id] = apps.run_apps(target, plain, installed.cgroup, kernel.id)
    return _measured[kernel.id]


@pytest.mark.parametrize("app", apps.APPS)
def test_app(kernel, lab, request, app):
    """The app does over the redirect what it does over plain TCP (or a named kernel defect)."""
    record = apps.verdict(records_of(kernel, lab, request), app)
    if record["status"] == "xfail":
        pytest.xfail(record["reason"])
    if record["status"] == "fail":
        pytest.fail(f"{app} through the redirect on {record['kernel']}: {record['reason']}\n"
                    f"observed: {record['observed']}", pytrace=False)
