"""Test outcomes from JUnit XML (pytest's ``--junitxml``), one ``Outcome`` per test and kernel.

pytest writes a test's parameters into its name (``test_fionread[kernel_6_1-peer_outside]``); the
kernel is the ``kernel_...`` part (the plugin's ids, never with a dash), the rest is the test's own
parametrisation. The plugin also records the kernel's catalog id and its artifact directory as
JUnit properties (``sockredir_kernel``, ``sockredir_artifacts``); they are used when present.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from dataclasses import asdict, dataclass
from pathlib import Path

from lab import LabError
from lab.kernel.catalog import split_test_name

NO_KERNEL = "no kernel"  # the column of tests that take none (unit tests, whole-command tests)
# The order in which a testcase's children decide its status (a call failure and a teardown error
# on one test: it failed).
STATUSES = ("fail", "error", "xpass", "xfail", "skip", "pass")
XPASS_PROPERTY = "sockredir_xpass"  # the plugin's record of a test that passed although marked xfail


@dataclass(frozen=True)
class Outcome:
    module: str        # tests.integration.test_redirect
    test: str          # the test's name with its non-kernel parameters: test_x[seed]
    kernel: str        # the kernel's id (6.1, host) or NO_KERNEL
    status: str        # one of STATUSES
    reason: str        # failure/skip/xfail/xpass message, "" for a pass
    seconds: float
    artifacts: str     # the test's artifact directory as the run wrote it, or ""
    run: str           # which file it came from
    timestamp: str     # when that run started (the testsuite's timestamp)
    strict: bool = False  # an xpass that fails the run (pytest's XPASS(strict))

    def as_dict(self) -> dict:
        return asdict(self)


def kernel_id_of(test_id: str) -> str:
    """``kernel_6_1`` -> ``6.1``, ``kernel_host`` -> ``host`` (the catalog's ids use dots)."""
    rest = test_id[len("kernel_"):]
    return rest.replace("_", ".") if re.fullmatch(r"\d+(_\d+)*", rest) else rest


def _status(case: ElementTree.Element, properties: dict[str, str]) -> tuple[str, str]:
    """A testcase's status and message. An xpass is its own status: a strict one (pytest wrote a
    failure, "[XPASS(strict)] ...") and a non-strict one (pytest wrote a pass) alike."""
    if XPASS_PROPERTY in properties:
        failure = case.find("failure")
        message = (failure.get("message") or "") if failure is not None else ""
        return "xpass", f"{properties[XPASS_PROPERTY]}: {message}".rstrip(": ")
    found = {}
    for child in case:
        message = child.get("message") or next(iter((child.text or "").strip().splitlines()), "")
        if child.tag == "failure":
            found.setdefault("fail", message)
        elif child.tag == "error":
            found.setdefault("error", message)
        elif child.tag == "skipped":
            found.setdefault("xfail" if child.get("type") == "pytest.xfail" else "skip", message)
    for status in STATUSES:
        if status in found:
            return status, found[status]
    return "pass", ""


def parse(path: Path) -> list[Outcome]:
    """Every testcase of one JUnit XML file (a LabError names a file that is not JUnit XML)."""
    try:
        root = ElementTree.parse(path).getroot()
    except (ElementTree.ParseError, OSError) as exc:
        raise LabError(f"{path}: not a readable JUnit XML file ({exc})") from None
    if root.tag not in ("testsuite", "testsuites"):
        raise LabError(f"{path}: not JUnit XML (root element <{root.tag}>)")
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    # A run of this plugin names every kernel test's kernel: then a test without the property
    # takes no kernel, whatever its parameters look like (a unit test's "kernel_6_1_rc2").
    recorded = any(p.get("name") == "sockredir_kernel" for p in root.iter("property"))
    outcomes = []
    for suite in suites:
        for case in suite.iter("testcase"):
            properties = {p.get("name"): p.get("value") for p in case.iter("property")}
            test, kernel_part = split_test_name(case.get("name", ""))
            if recorded and "sockredir_kernel" not in properties:
                test, kernel_part = case.get("name", ""), None
            kernel = properties.get("sockredir_kernel") or (kernel_id_of(kernel_part) if kernel_part
                                                            else NO_KERNEL)
            status, reason = _status(case, properties)
            strict = status == "xpass" and properties[XPASS_PROPERTY] == "strict"
            outcomes.append(Outcome(module=case.get("classname", ""), test=test, kernel=kernel,
                                    status=status, reason=reason,
                                    seconds=float(case.get("time") or 0),
                                    artifacts=properties.get("sockredir_artifacts", ""),
                                    run=str(path), timestamp=suite.get("timestamp", ""), strict=strict))
    return outcomes


def find_files(paths: list[Path]) -> list[Path]:
    """The result files named, or found under the directories named (recursively): JUnit XML, and
    the suite's suite.json (``lab.matrix.suite_json``)."""
    found = []
    for path in paths:
        if path.is_dir():
            # What a test wrote into its own artifact directory (ARTIFACTS/tests/<test>/) is that
            # test's material, not a run of the report's.
            mine = [p for p in sorted(path.rglob("*")) if "tests" not in p.relative_to(path).parts[:-1]]
            found.extend(p for p in mine if p.suffix == ".xml" and _looks_like_junit(p))
            found.extend(p for p in mine if p.name == "suite.json")
        elif path.is_file():
            found.append(path)
        else:
            raise LabError(f"{path}: no such file or directory")
    return found


def _looks_like_junit(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(512)
    return b"<testsuite" in head
