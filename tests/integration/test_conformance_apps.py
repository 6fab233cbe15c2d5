"""Applications through the redirect (lab/conformance/apps.py), one test per app and kernel
(``test_app[kernel_6_1-nginx-redirect]``): nginx's sendfile over keep-alive, redis pipelined and
read back, a splice(2) proxy. Each runs over plain TCP (the reference), through the redirect and
through the pass-only watching programs, judged by bytes and time; a run that differs or stalls
fails, unless it is exactly a known kernel defect's symptom (then an xfail naming it).

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
        with api.cgroup(target) as plain, api.redirected_cgroup(target) as installed, \
                api.redirected_cgroup(target, "passthrough") as watching:
            entry = None if kernel.id == "host" else lab.settings.catalog().find(kernel.id)
            _measured[kernel.id] = apps.run_apps(target, plain, installed.cgroup, kernel.id,
                                                 passthrough_cgroup=watching.cgroup,
                                                 patches=frozenset(p.name for p in entry.patches) if entry else frozenset())
    return _measured[kernel.id]


@pytest.mark.parametrize("transport", [t for t in apps.TRANSPORTS if t != "tcp"])
@pytest.mark.parametrize("app", apps.APPS)
def test_app(kernel, lab, request, app, transport):
    """The app does over the redirect, and through a pass-only sk_msg program, what it does over
    plain TCP in no more than twice its time (or a named kernel defect)."""
    record = apps.verdict(records_of(kernel, lab, request), app, transport)
    if record["status"] == "xfail":
        pytest.xfail(record["reason"])
    if record["status"] == "fail":
        pytest.fail(f"{app} over {transport} on {record['kernel']}: {record['reason']}\n"
                    f"observed: {record['observed']}", pytrace=False)
