"""Waiting for something to happen, for tests: `poll` a value until it is what is wanted.

Built on `blockyard.exec.wait_until`, which owns the loop and its hang guard; `poll` adds the
value (returned on success, shown on failure) and fails as a test assertion.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from blockyard.exec import WaitTimeout, wait_until

T = TypeVar("T")


def poll(fetch: Callable[[], T], until: Callable[[T], bool], *, timeout: float = 30.0,
         what: str = "condition") -> T:
    """Call `fetch` until `until(result)` holds; fail with the last result after `timeout`."""
    seen: list[T] = []

    def reached() -> bool:
        seen[:] = [fetch()]
        return until(seen[0])

    try:
        wait_until(reached, timeout, what=what)
    except WaitTimeout:
        last = repr(seen[0]) if seen else "nothing"
        raise AssertionError(f"{what} not reached within {timeout}s; last: {last[-3000:]}") \
            from None
    return seen[0]
