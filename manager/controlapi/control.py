"""The control API's writes by name, run on the Raft leader.

:data:`CALLS` maps a call's name (``"services.create"``) to its function and argument types.
:meth:`Control.call` runs a call here when this manager is the leader, else sends it to the
leader as a 2377 ``control.call`` message ``{"call": name, "args": {...}}`` (msgpack, bounded by
:data:`shoal.rpc.wire.MANAGER_LIMITS` as every manager-to-manager message); the leader's
:meth:`Control.handle` answers ``{"result": value}`` or ``{"error": {"type": class name,
"message": text}}``, and the follower raises the same :mod:`manager.controlapi.errors` class.
The 2377 server lets only current managers send ``control.call`` (certificate and ``Spec.Role``
in the store; ``ManagerServer.register(..., role="manager")``). Reads are not in the registry:
any manager serves them from its own store (linearizable after ``Manager.read_barrier``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from manager.controlapi import cluster, networks, nodes, services
from manager.controlapi.common import spec
from manager.controlapi.errors import (
    BY_NAME,
    UNAVAILABLE,
    ControlError,
    InvalidArgument,
    Unavailable,
    unavailable,
)
from manager.specs import validate_node_spec, validate_service_spec, validate_swarm_spec
from manager.store import Unavailable as StoreUnavailable
from shoal.rpc import wire

MESSAGE = "control.call"
"""The 2377 message type of a control API call sent to the leader."""

CALL_TIMEOUT = 120.0
"""Seconds a follower waits for the leader's answer to a ``control.call``."""

ANY = object
"""Argument type: any msgpack value (a spec is validated by the call itself)."""

CALLS: dict[str, tuple[Callable[..., Awaitable[Any]], dict[str, type]]] = {
    "cluster.update": (cluster.update, {"version": int, "spec_body": ANY, "rotate_worker_token": bool,
                                        "rotate_manager_token": bool, "rotate_manager_unlock_key": bool}),
    "nodes.update": (nodes.update, {"ref": str, "version": int, "spec_body": ANY}),
    "nodes.remove": (nodes.remove, {"ref": str, "force": bool}),
    "services.create": (services.create, {"spec_body": ANY}),
    "services.update": (services.update, {"ref": str, "version": int, "spec_body": ANY, "rollback": bool}),
    "services.remove": (services.remove, {"ref": str}),
    "networks.create": (networks.create, {"spec_body": ANY}),
    "networks.remove": (networks.remove, {"ref": str}),
}
"""The writes: name → (``async fn(ctx, **args)``, ``{argument: type}``). Every argument is a
keyword; those not given take the function's default."""



def _precheck_spec(validate: Callable[[Any], dict[str, Any]]) -> Callable[[Any, dict[str, Any]], None]:
    def check(ctx: Any, args: dict[str, Any]) -> None:
        spec(validate, args.get("spec_body"))
    return check


def _precheck_network_create(ctx: Any, args: dict[str, Any]) -> None:
    networks.validate_create_request(args.get("spec_body"))


def _precheck_service_update(ctx: Any, args: dict[str, Any]) -> None:
    if not args.get("rollback"):
        spec(validate_service_spec, args.get("spec_body"))


PRECHECKS: dict[str, Callable[[Any, dict[str, Any]], None]] = {
    "cluster.update": _precheck_spec(validate_swarm_spec),
    "nodes.update": _precheck_spec(validate_node_spec),
    "services.create": _precheck_spec(validate_service_spec),
    "services.update": _precheck_service_update,
    "networks.create": _precheck_network_create,
}
"""What a follower checks when a call cannot reach the leader because of its body: the spec,
validated as the leader would (the same :class:`InvalidArgument`), so a hostile body (integers
msgpack cannot carry, arrays over :data:`shoal.rpc.wire.MANAGER_LIMITS`) is a 400 naming what is
wrong, not a failed forward. Otherwise the leader validates: a follower without a leader answers
503 (no quorum) for any write, as a follower that forwarded an HTTP request did before."""

LEADERSHIP_MOVED = UNAVAILABLE + "leadership moved while the request was forwarded; retry"


def check_args(name: Any, args: Any) -> tuple[Callable[..., Awaitable[Any]], dict[str, Any]]:
    """The function of call ``name`` and ``args`` checked against its argument types. Raises
    :class:`InvalidArgument` for an unknown call, an unknown argument or one of the wrong type."""
    entry = CALLS.get(name) if isinstance(name, str) else None
    if entry is None:
        raise InvalidArgument(f"unknown control API call {str(name)[:64]!r}")
    fn, types = entry
    if not isinstance(args, dict):
        raise InvalidArgument(f"{name}: the arguments must be a map")
    for k, v in args.items():
        want = types.get(k) if isinstance(k, str) else None
        if want is None:
            raise InvalidArgument(f"{name}: unknown argument {str(k)[:64]!r}")
        if want is not ANY and (not isinstance(v, want) or (want is int and isinstance(v, bool))):
            raise InvalidArgument(f"{name}: argument {k} must be {want.__name__}")
    return fn, args


class Control:
    """Runs control API writes for the manager ``ctx`` (:class:`manager.manager.Manager`, or
    anything with :class:`manager.controlapi.common.Context`'s attributes; ``is_leader`` and
    ``leader_link`` (:class:`manager.leaderlink.LeaderLink`) when there may be other managers: a
    context without ``is_leader`` is a single manager, always the leader)."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx

    def _is_leader(self) -> bool:
        return bool(getattr(self.ctx, "is_leader", True))

    async def local(self, name: Any, args: Any) -> Any:
        """Run call ``name`` (a key of :data:`CALLS`) with ``args`` (a map) here: this manager is
        the leader. Raises :class:`InvalidArgument` for a call or arguments :func:`check_args`
        refuses, and the call's :mod:`manager.controlapi.errors`."""
        fn, checked = check_args(name, args)
        return await fn(self.ctx, **checked)

    async def call(self, name: str, args: dict[str, Any]) -> Any:
        """Run call ``name`` with ``args`` on the leader: here, or through ``control.call``.
        Returns the call's result. Raises :mod:`manager.controlapi.errors` (the leader's error as
        the same class); :class:`Unavailable` when no leader is known or it cannot be reached
        (``rpc error: code = Unavailable desc = …``, "forwarding to the leader failed: …" when the
        leader refused the message)."""
        if self._is_leader():
            return await self.local(name, args)
        check_args(name, args)
        message = {"call": name, "args": args}
        try:
            wire.encode_frame(message)
        except wire.WireError as e:  # integers msgpack cannot carry, a body over the frame limit
            self._precheck(name, args)
            raise InvalidArgument(f"{name}: the request cannot be sent to the leader: {e}") from e
        try:
            reply = await self.ctx.leader_link.request(MESSAGE, message, timeout=CALL_TIMEOUT)
        except StoreUnavailable as e:
            raise unavailable(str(e)) from e
        except wire.WireError as e:  # e.g. the leader refused a frame over its limits
            self._precheck(name, args)
            raise Unavailable(f"{UNAVAILABLE}forwarding to the leader failed: {e}") from e
        return decode_reply(reply)

    def _precheck(self, name: str, args: dict[str, Any]) -> None:
        """Validate the spec of a call that could not reach the leader, as the leader would
        (:data:`PRECHECKS`): a hostile body is a 400 naming what is wrong, not a failed forward.
        Raises :class:`InvalidArgument`."""
        pre = PRECHECKS.get(name)
        if pre is not None:
            pre(self.ctx, args)

    async def handle(self, peer: wire.Peer, node_id: str, role: str, body: dict[str, Any]) -> dict[str, Any]:
        """The 2377 handler of ``control.call`` ``{"call", "args"}`` from another manager: the
        call's result as ``{"result": value}``, or its error as ``{"error": {"type", "message"}}``
        (``Unavailable`` "leadership moved …" when this manager is no longer the leader)."""
        try:
            if not self._is_leader():
                raise Unavailable(LEADERSHIP_MOVED)
            return {"result": await self.local(body.get("call"), body.get("args"))}
        except ControlError as e:
            return {"error": {"type": type(e).__name__, "message": e.message}}


def decode_reply(reply: dict[str, Any]) -> Any:
    """The result of a ``control.call`` reply, or its error raised as its class (an unknown class
    name as :class:`ControlError`, 500)."""
    err = reply.get("error")
    if isinstance(err, dict):
        cls = BY_NAME.get(str(err.get("type")), ControlError)
        raise cls(str(err.get("message", "")))
    return reply.get("result")


def handler(ctx: Any) -> Callable[[wire.Peer, str, str, dict[str, Any]], Awaitable[dict[str, Any]]]:
    """The ``control.call`` handler for the 2377 server of manager ``ctx``."""
    return Control(ctx).handle
