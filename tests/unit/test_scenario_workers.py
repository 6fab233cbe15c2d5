"""scenarios/common.py's workers: when one side's data step fails, the round ends with that first
error as its cause instead of the other side's timeout (a side whose recv failed stops reading,
and its peer's send then blocks for good). Real forked workers, on the host, no root needed."""

from __future__ import annotations

import importlib.util
import time
import types

import pytest

from lab import SCENARIOS_DIR


@pytest.fixture(scope="module")
def common() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("scenario_common", SCENARIOS_DIR / "common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def failing_side():
    yield {"ready": True}
    yield {"error": "recv: [Errno 11] blocking recv() failed with EAGAIN: Resource temporarily unavailable"}


def blocked_side():
    yield {"ready": True}
    time.sleep(600)  # a send blocked on a window that never opens
    yield {"error": None}


def quick_server():
    yield {"ready": True}
    time.sleep(0.3)  # reports after the client
    yield {"error": None, "received": 3}


def quick_client():
    yield {"ready": True}
    yield {"error": None, "received": 5}


def round_with(common, *functions, timeout=60):
    args = types.SimpleNamespace(tag="", client_cgroup=None, server_cgroup=None, cgroup=None, timeout=timeout,
                                 map_pin=None, counters_pin=None)
    ctx = common.Round(args, "redirect", 0, trace=None)
    workers = [ctx.spawn(function, name=function.__name__) for function in functions]
    for worker in workers:
        worker.report()  # the ready step
    return ctx, workers


def test_the_first_error_is_the_cause_and_the_blocked_peer_is_stopped(common):
    ctx, workers = round_with(common, blocked_side, failing_side)
    for worker in workers:
        worker.resume()
    started = time.monotonic()
    with pytest.raises(common.ScenarioError) as raised:
        common.gather(workers, grace=1.0)
    assert time.monotonic() - started < 10
    assert str(raised.value) == ("failing_side: recv: [Errno 11] blocking recv() failed with EAGAIN: "
                                 "Resource temporarily unavailable; blocked_side still blocked 1 s later (stopped)")
    ctx.finish()  # the stopped worker is reaped already: finishing the round must not wait or fail


def test_reports_come_in_any_order_without_errors(common):
    ctx, workers = round_with(common, quick_server, quick_client)
    for worker in workers:
        worker.resume()
    assert common.gather(workers, grace=1.0) == {"quick_server": {"error": None, "received": 3},
                                                 "quick_client": {"error": None, "received": 5}}
    ctx.finish()


def hanging_side():
    import threading
    helper = threading.Thread(target=threading.Event().wait, name="helper", daemon=True)
    helper.start()
    yield {"ready": True}
    time.sleep(600)  # interrupted by the worker's own --timeout
    yield {"error": None}


def test_a_hang_says_where_each_thread_waits_in_python_and_in_the_kernel(common):
    ctx, (worker,) = round_with(common, hanging_side, timeout=1)
    worker.resume()
    with pytest.raises(common.ScenarioError) as raised:
        worker.report()
    text = str(raised.value)
    assert "TimeoutError: the scenario's --timeout expired" in text
    # The forked worker's own thread is the one running the alarm handler, whatever native id
    # Python kept from the parent; the helper's kernel wait is read from its wchan.
    assert "MainThread in hanging_side" in text and "(kernel: running)" in text, text
    assert "helper in" in text and "unreadable" not in text, text
    ctx.finish()
