"""The ASGI application: the route table, the middleware stack and the lifespan.

Endpoints parse, call a service function and render; the runtime (database, backends, task
runner) is built in `lifespan` and reached through ``request.app.state.runtime``.
"""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import AsyncIterator

import anyio.to_thread
from starlette.applications import Starlette
from starlette.middleware import Middleware

from blockyard.api import (
    attachments,
    availability_zones,
    encryption,
    extensions,
    group_snapshots,
    group_types,
    groups,
    limits,
    messages,
    pools,
    qos,
    quota_classes,
    quotas,
    services,
    snapshots,
    transfers,
    types,
    versions,
    volumes,
)
from blockyard.api.wire import CinderMiddleware
from blockyard.config import Config
from blockyard.rest import errors
from blockyard.rest.guard import CatchAll, RequestLimits
from blockyard.service.lifecycle import build_runtime, close_runtime
from blockyard.service.runtime import Runtime

log = logging.getLogger(__name__)

#: threads that run requests' blocking work (database, backend calls made inline)
REQUEST_THREADS = 2

#: outermost first: version and request-id headers go on every answer, the catch-all's too
MIDDLEWARE = [Middleware(CinderMiddleware), Middleware(CatchAll), Middleware(RequestLimits)]

ROUTES = [
    *versions.routes,
    *volumes.routes,
    *snapshots.routes,
    *attachments.routes,
    *types.routes,
    *encryption.routes,
    *group_types.routes,
    *groups.routes,
    *group_snapshots.routes,
    *qos.routes,
    *quotas.routes,
    *quota_classes.routes,
    *limits.routes,
    *availability_zones.routes,
    *extensions.routes,
    *pools.routes,
    *services.routes,
    *transfers.routes,
    *messages.routes,
]


def create_app(config: Config) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        rt = build_runtime(config)
        app.state.runtime = rt
        # Requests run their database work on this many threads; more only add GIL handoffs
        # on a small machine (the database serialises writers anyway).
        anyio.to_thread.current_default_thread_limiter().total_tokens = REQUEST_THREADS
        # everything built so far lives for the whole run: keep the collector from walking it
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            close_runtime(rt)

    return Starlette(
        routes=ROUTES,
        middleware=MIDDLEWARE,
        exception_handlers=errors.HANDLERS,
        lifespan=lifespan,
    )


def create_app_with_runtime(rt: Runtime) -> Starlette:
    """An app around an already built runtime (in-process tests)."""
    app = Starlette(
        routes=ROUTES,
        middleware=MIDDLEWARE,
        exception_handlers=errors.HANDLERS,
    )
    app.state.runtime = rt
    return app
