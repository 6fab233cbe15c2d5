"""The kernel x test report's HTML in a real browser: headless Chromium loads the one file (no
network, nothing beside it) and the table it builds is read back from its DOM and compared with
report.json, cell by cell."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from lab.matrix import report

SAMPLES = Path(__file__).resolve().parents[1] / "unit" / "junit_samples"


class Cells(HTMLParser):
    """(test, kernel) -> status of the #matrix table's cells, as the browser laid them out."""

    def __init__(self):
        super().__init__()
        self.cells: dict[tuple[str, str], str] = {}
        self.test: str | None = None
        self.in_test = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "td" and attrs.get("class") == "test":
            self.in_test, self.test = True, ""
        elif tag == "td" and "data-status" in attrs:
            self.cells[(self.test, attrs["data-kernel"])] = attrs["data-status"]

    def handle_data(self, data):
        if self.in_test:
            self.test += data

    def handle_endtag(self, tag):
        if tag == "td":
            self.in_test = False


def test_chromium_shows_the_cells_of_report_json(tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.fail("chromium is not installed: scripts/install-deps installs it (debian-packages.txt)")
    written = report.write(report.collect([SAMPLES]), tmp_path)
    page = written["html"].resolve().as_uri()
    done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    parsed = Cells()
    parsed.feed(done.stdout)
    doc = json.loads(written["json"].read_text())
    expected = {(row["test"], kernel): cell["status"] for row in doc["rows"] for kernel, cell in row["cells"].items()}
    assert parsed.cells == expected
    assert f"{sum(doc['totals'].values())} cells over {len(doc['kernels'])} kernel columns" in done.stdout
