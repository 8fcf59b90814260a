"""An undo stack for multi-step work (Incus's ``revert`` in Python).

    async with Undo() as undo:
        a = await step_one()
        undo.push(undo_step_one, a)
        await step_two()          # raises: undo_step_one runs, then the error propagates
        undo.commit()             # success: nothing is undone

Unlike `contextlib.AsyncExitStack`, a failing undo step does not replace the error that
caused the rollback: it is logged and the remaining steps still run, newest first.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)


class Undo:
    def __init__(self) -> None:
        self._steps: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        #: undo steps that failed during the last rollback (what may be left behind)
        self.failures: list[BaseException] = []

    def push(self, fn: Callable[..., Any], *args: Any) -> None:
        """Register how to undo the step just done (a function or a coroutine function)."""
        self._steps.append((fn, args))

    def commit(self) -> None:
        """Everything succeeded: forget the undo steps."""
        self._steps.clear()

    async def rollback(self) -> None:
        while self._steps:
            fn, args = self._steps.pop()
            try:
                result = fn(*args)
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:  # keep undoing: the rest may still succeed
                log.error("undo step %s failed: %s", getattr(fn, "__name__", fn), exc)
                self.failures.append(exc)

    async def __aenter__(self) -> Undo:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc is not None:
            await self.rollback()
