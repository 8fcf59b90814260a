"""The id of the API request being served, for records made on its behalf later.

The API's middleware sets it for each request; `tasks.enqueue` copies it into the task it
queues, so that a user message about a task that failed long after its request answered names
the request that started it (as Cinder's messages do).
"""

from __future__ import annotations

from contextvars import ContextVar

#: ``req-<uuid>`` of the request this code runs for; None outside a request
REQUEST_ID: ContextVar[str | None] = ContextVar("blockyard_request_id", default=None)


def current_request_id() -> str | None:
    return REQUEST_ID.get()
