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
from blockyard.config import AuthConfig, Config
from blockyard.rest import errors
from blockyard.rest.auth import Authenticate, KeystoneValidator
from blockyard.rest.guard import CatchAll, RequestLimits
from blockyard.service.lifecycle import build_runtime, close_runtime
from blockyard.service.runtime import Runtime

log = logging.getLogger(__name__)

#: threads that run requests' blocking work (database, backend calls made inline)
REQUEST_THREADS = 2

#: what answers without authentication: version discovery (as in Cinder's paste pipeline)
PUBLIC_PATHS = frozenset({"/", "/v3", "/v3/"})


def is_public(method: str, path: str) -> bool:
    return method in ("GET", "HEAD") and path in PUBLIC_PATHS


def middleware(auth: AuthConfig) -> list[Middleware]:
    """Outermost first: version and request-id headers go on every answer (a 401 and the
    catch-all's too); authentication comes after the size limits and before any endpoint."""
    validator = KeystoneValidator(auth.keystone_authtoken) if auth.keystone else None
    return [Middleware(CinderMiddleware), Middleware(CatchAll), Middleware(RequestLimits),
            Middleware(Authenticate, validator=validator, public=is_public)]

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
        middleware=middleware(config.auth),
        exception_handlers=errors.HANDLERS,
        lifespan=lifespan,
    )


def create_app_with_runtime(rt: Runtime) -> Starlette:
    """An app around an already built runtime (in-process tests)."""
    app = Starlette(
        routes=ROUTES,
        middleware=middleware(rt.config.auth),
        exception_handlers=errors.HANDLERS,
    )
    app.state.runtime = rt
    return app
