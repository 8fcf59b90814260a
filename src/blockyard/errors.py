"""Domain errors of blockyard, free of HTTP.

The tree::

    BlockyardError
    ├── NotFound(kind, ident)             a volume/snapshot/type/... does not exist (or is hidden)
    ├── Forbidden(rule)                   a policy rule does not allow the caller this
    ├── Invalid(message)                  the request is well formed but not acceptable
    │   ├── InvalidState(kind, ident, current, allowed)   lost a compare-and-swap on a status
    │   ├── InUse(message)                something still depends on the resource
    │   └── ConnectionInfoError(message)  a connection_info lacks a key, or has a bad one
    ├── Conflict(message)                 a name or key is taken
    ├── QuotaExceeded(resource, requested, limit, in_use)
    ├── NotSupported(message)             the backend cannot do this
    ├── BackendError(message, cause)      a driver call failed underneath
    │   └── ConnectorError(message)       attaching/opening a volume failed on this host
    └── ConfigError(key, message)         the configuration file is wrong

`blockyard.rest.errors` maps each class to an HTTP status and Cinder fault name; nothing below the
API layer knows about HTTP.
"""

from __future__ import annotations


class BlockyardError(Exception):
    """Root of every error blockyard raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(BlockyardError):
    """A resource does not exist, or is not visible to the caller."""

    def __init__(self, kind: str, ident: str, message: str | None = None) -> None:
        super().__init__(message or f"{kind} {ident} could not be found.")
        self.kind = kind
        self.ident = ident


class Forbidden(BlockyardError):
    """A policy rule does not allow the caller to do this (Cinder's PolicyNotAuthorized)."""

    def __init__(self, rule: str) -> None:
        super().__init__(f"Policy doesn't allow {rule} to be performed.")
        self.rule = rule


class Invalid(BlockyardError):
    """The request is well formed but cannot be honoured as asked."""


class InvalidState(Invalid):
    """A status transition lost its compare-and-swap: the row was not in an allowed status."""

    def __init__(
        self, kind: str, ident: str, current: str | None, allowed: tuple[str, ...], action: str
    ) -> None:
        wanted = ", ".join(allowed)
        super().__init__(
            f"Invalid {kind.lower()}: {kind} {ident} status must be {wanted} to {action}, "
            f"but current status is: {current}."
        )
        self.kind = kind
        self.ident = ident
        self.current = current
        self.allowed = allowed
        self.action = action


class InUse(Invalid):
    """Something still depends on the resource (snapshots, clones in progress, a task)."""


class ConnectionInfoError(Invalid):
    """The connection info is missing a key, or a key has the wrong shape."""


class Conflict(BlockyardError):
    """A unique name or key is already taken."""


class QuotaExceeded(BlockyardError):
    """A quota would be exceeded by the request."""

    def __init__(self, resource: str, requested: int, limit: int, in_use: int) -> None:
        if resource.startswith("gigabytes"):
            message = (
                f"VolumeSizeExceedsAvailableQuota: Requested volume or snapshot exceeds allowed "
                f"{resource} quota. Requested {requested}G, quota is {limit}G and {in_use}G has "
                f"been consumed."
            )
        else:
            message = (
                f"Maximum number of {resource} allowed ({limit}) exceeded for quota '{resource}'."
            )
        super().__init__(message)
        self.resource = resource
        self.requested = requested
        self.limit = limit
        self.in_use = in_use


class NotSupported(BlockyardError):
    """The backend (or this deployment) does not implement the operation."""


class BackendError(BlockyardError):
    """A driver call failed; `cause` is the underlying exception."""

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause


class ConnectorError(BackendError):
    """Attaching, opening or detaching a volume failed on this host."""


class ConfigError(BlockyardError):
    """The configuration is wrong; `key` names the offending setting."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
