"""``pytest --progress-fd N``: the run's progress as typed events (``lab.matrix.events``) on a file
descriptor its follower passed, registered by the plugin in the controlling process only (under
pytest-xdist the workers' reports reach the controller, which speaks for them)."""

from __future__ import annotations

import pytest

from lab.matrix.events import Emitter


class ProgressEvents:
    def __init__(self, config: pytest.Config, emitter: Emitter):
        self._config, self._emitter, self._selected = config, emitter, False

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self._say_selected(len(session.items))

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node, ids) -> None:
        self._say_selected(len(ids))  # every worker collects the same tests

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        category = self._config.hook.pytest_report_teststatus(report=report, config=self._config)[0]
        self._emitter.result(report.nodeid, category)

    def pytest_unconfigure(self) -> None:
        self._emitter.close()

    def _say_selected(self, count: int) -> None:
        if not self._selected:
            self._selected = True
            self._emitter.selected(count)


def register(config: pytest.Config) -> None:
    fd = config.option.progress_fd
    if fd is None or hasattr(config, "workerinput"):
        return
    try:
        emitter = Emitter(fd)
    except ValueError as exc:
        raise pytest.UsageError(f"sockredir-lab: {exc}") from None
    config.pluginmanager.register(ProgressEvents(config, emitter), "sockredir-progress-events")
