"""One way to wait in a test: poll a condition until it holds or a deadline passes."""

import time


def wait_for(predicate, timeout: float = 60.0, what: str = "a condition", interval: float = 0.005):
    """Poll ``predicate`` until it returns something truthy and return that; fail naming ``what``.

    ``interval`` trades CPU for reaction time: the job tests poll every 5 ms to catch a moment to
    kill a process at, the browser tests every 0.5 s while the page works.
    """
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; last value: {value!r}")
