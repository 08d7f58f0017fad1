"""The control API's errors. Each class carries the HTTP status the Docker Engine API answers it
with; ``message`` is the exact text the API returns (``{"message": message}``), which the docker
CLI prints and tests match. The classes travel between managers by name
(:data:`BY_NAME`): a follower re-raises the leader's error as the same class."""

from __future__ import annotations

from manager.store import Conflict as StoreConflict
from manager.store import NotFound as StoreNotFound
from manager.store import Unavailable as StoreUnavailable

INVALID_ARGUMENT = "rpc error: code = InvalidArgument desc = "
FAILED_PRECONDITION = "rpc error: code = FailedPrecondition desc = "
UNAVAILABLE = "rpc error: code = Unavailable desc = "


class ControlError(Exception):
    """Base class: ``status`` (HTTP) and ``message`` (the API's message, verbatim)."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ControlError):
    """A malformed spec, filter or argument; an ambiguous name or ID prefix. HTTP 400."""

    status = 400


class FailedPrecondition(ControlError):
    """The cluster's state forbids the call (remove a manager or a node that is up, demote the
    last manager). HTTP 400, as Docker answers these."""

    status = 400


class PermissionDenied(ControlError):
    """What swarmkit refuses with PermissionDenied and Docker answers 403: a pre-defined network
    name, the ``com.docker.swarm.internal`` label. HTTP 403."""

    status = 403


class NotFound(ControlError):
    """No object with that ID, name or ID prefix. HTTP 404."""

    status = 404


class Conflict(ControlError):
    """A name taken by another object. HTTP 409."""

    status = 409


class Unknown(ControlError):
    """What swarmkit answers with a plain (Unknown) gRPC error, which Docker turns into 500: an
    update out of sequence (stale ``version``). HTTP 500."""

    status = 500


class Unimplemented(ControlError):
    """A call shoal does not implement (renaming a service, join-token rotation on a manager
    without it). HTTP 501."""

    status = 501


class Unavailable(ControlError):
    """The store cannot commit or the leader cannot be reached (no leader, leadership moved,
    forwarding failed). HTTP 503; the message starts ``rpc error: code = Unavailable desc =``."""

    status = 503


class NoQuorum(Unavailable):
    """The Raft cluster has no quorum (``… desc = no quorum: …``). HTTP 503."""

    status = 503


BY_NAME: dict[str, type[ControlError]] = {c.__name__: c for c in (
    ControlError, InvalidArgument, FailedPrecondition, PermissionDenied, NotFound, Conflict, Unknown, Unimplemented,
    Unavailable, NoQuorum)}
"""Error classes by name, for errors that come back from the leader."""


def unavailable(reason: str) -> Unavailable:
    """``Unavailable`` (or ``NoQuorum`` when ``reason`` starts with "no quorum") with the API's
    message ``rpc error: code = Unavailable desc = {reason}``."""
    cls = NoQuorum if reason.startswith("no quorum") else Unavailable
    return cls(UNAVAILABLE + reason)


def from_store(e: Exception) -> ControlError:
    """The control API error for a store error (:mod:`manager.store`): a version mismatch is
    :class:`Unknown` (500, as swarmkit's plain error), another conflict :class:`Conflict`,
    :class:`NotFound`, :class:`Unavailable` / :class:`NoQuorum`; anything else :class:`Unknown`."""
    msg = str(e)
    if isinstance(e, StoreConflict):
        return Unknown(msg) if "out of sequence" in msg else Conflict(msg)
    if isinstance(e, StoreNotFound):
        return NotFound(msg)
    if isinstance(e, StoreUnavailable):
        return unavailable(msg)
    return Unknown(msg)
