"""The one way the lab waits for something to become true: ``until(probe, ...)``.

A probe is asked, then asked again every ``every`` seconds, until it returns something truthy
(returned to the caller) or the deadline passes. A probe that finds the wait hopeless (the process
it waits on has exited, a kernel crashed) raises, and the wait ends with its error at once. What a
timeout means is the caller's: ``fail`` builds the error to raise, and without it the probe's last
(falsy) answer is returned, for waits where "not yet" is itself the result.
"""

from __future__ import annotations

import math
import time
from typing import Callable, TypeVar

T = TypeVar("T")


def until(probe: Callable[[], T], *, every: float, seconds: float | None = None, deadline: float | None = None,
          fail: Callable[[], BaseException] | None = None) -> T:
    """``probe()`` until truthy, at most ``seconds`` from now or until ``deadline`` (time.monotonic();
    neither: no limit)."""
    if seconds is not None and deadline is not None:
        raise ValueError("give seconds or a deadline, not both")
    end = time.monotonic() + seconds if seconds is not None else deadline if deadline is not None else math.inf
    while True:
        answer = probe()
        if answer:
            return answer
        left = end - time.monotonic()
        if left <= 0:
            if fail is not None:
                raise fail()
            return answer
        time.sleep(min(every, left))
