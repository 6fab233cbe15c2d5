"""The one check of a scenarios/pair.py result that every redirect test makes: no error, or, when
the error is a blocking recv()'s EAGAIN, an xfail naming that kernel defect (never a retry)."""

from __future__ import annotations

import pytest

from lab.conformance import defects


def assert_no_error(pair: dict, target) -> None:
    defect = defects.explain_pair_error(pair.get("error"), defects.upstream_version(target))
    if defect:
        pytest.xfail(f"{defect.describe()}: {pair['error']}")
    assert pair["error"] is None, pair["error"]
