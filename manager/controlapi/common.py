"""What the control API's resource modules share: the context a call runs in, Docker's lookup of
an object by ID, name or ID prefix, filters, and the one store transaction of a write."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol, TypeVar

from manager.controlapi.errors import INVALID_ARGUMENT, ControlError, InvalidArgument, NotFound, from_store
from manager.specs import SpecError
from manager.store import Conflict as StoreConflict
from manager.store import NotFound as StoreNotFound
from manager.store import ReadTx, Store, WriteTx
from manager.store import Unavailable as StoreUnavailable

Obj = dict[str, Any]
T = TypeVar("T")

ManagerStatus = Callable[[str], "Obj | None"]
"""``manager_status(node_id)``: the Docker ``ManagerStatus`` of a node (``{"Leader"?,
"Reachability", "Addr"}``) or None for a worker."""


class Context(Protocol):
    """What a control API call needs from the manager it runs on (:class:`manager.manager.Manager`
    provides all of it): ``store``, ``cluster_id``, ``ca_cert_pem``, ``join_tokens() ->
    {"Worker", "Manager"}``, ``rotate_join_token(role) -> token`` and ``demote_problem(node_id)
    -> reason | None`` (checked when a manager is demoted)."""

    @property
    def store(self) -> Store: ...

    @property
    def cluster_id(self) -> str: ...

    @property
    def ca_cert_pem(self) -> str: ...

    def join_tokens(self) -> dict[str, str]: ...

    def demote_problem(self, node_id: str) -> str | None: ...


def spec(validate: Callable[[Any], Obj], body: Any) -> Obj:
    """``validate(body)`` (a :mod:`manager.specs` validator); raises :class:`InvalidArgument`
    ``rpc error: code = InvalidArgument desc = {reason}``."""
    try:
        return validate(body)
    except SpecError as e:
        raise InvalidArgument(INVALID_ARGUMENT + str(e)) from None


async def commit(store: Store, fn: Callable[[WriteTx], T]) -> T:
    """Run ``fn`` as one store transaction (:meth:`manager.store.Store.update`). Store errors
    become control API errors (:func:`manager.controlapi.errors.from_store`); ``fn`` may raise
    control API errors itself (nothing is written then)."""
    try:
        return await store.update(fn)
    except (StoreConflict, StoreNotFound, StoreUnavailable) as e:
        raise from_store(e) from e


def resolve(view: ReadTx, table: str, ref: str, kind: str, names: Callable[[Obj], Iterable[str]]) -> Obj:
    """Docker's lookup of ``ref`` in ``table``: exact ID, then name (``names(obj)``), then unique
    ID prefix. Raises :class:`InvalidArgument` ``{kind} {ref} is ambiguous ({n} matches found)``
    or :class:`NotFound` ``{kind} {ref} not found``."""
    obj = view.get(table, ref)
    if obj is not None:
        return obj
    items = view.list(table)
    by_name = [o for o in items if ref in set(names(o))]
    if len(by_name) == 1:
        return by_name[0]
    if len(by_name) > 1:
        raise InvalidArgument(f"{kind} {ref} is ambiguous ({len(by_name)} matches found)")
    by_prefix = [o for o in items if str(o["ID"]).startswith(ref)] if ref else []
    if len(by_prefix) == 1:
        return by_prefix[0]
    if len(by_prefix) > 1:
        raise InvalidArgument(f"{kind} {ref} is ambiguous ({len(by_prefix)} matches found)")
    raise NotFound(f"{kind} {ref} not found")


def service_names(o: Obj) -> list[str]:
    """The names a service is found by: ``Spec.Name``."""
    return [str((o.get("Spec") or {}).get("Name", ""))]


def node_names(o: Obj) -> list[str]:
    """The names a node is found by: its hostname and ``Spec.Name``."""
    return [str((o.get("Description") or {}).get("Hostname", "")), str((o.get("Spec") or {}).get("Name", ""))]


def task_names(o: Obj) -> list[str]:
    """The names a task is found by: its ``Name``."""
    return [str(o.get("Name", ""))]


Filters = dict[str, list[str]]
"""Docker's list filters, parsed: key → values (``{"name": ["web"], "label": ["a=b"]}``)."""


def check_filters(filters: Filters, allowed: Iterable[str]) -> None:
    """Raise :class:`InvalidArgument` ``invalid filter '{key}'`` for a key not in ``allowed``."""
    allowed = set(allowed)
    for k in filters:
        if k not in allowed:
            raise InvalidArgument(f"invalid filter '{k}'")


def labels_match(labels: dict[str, str] | None, wanted: list[str]) -> bool:
    """Whether ``labels`` has every ``key`` or ``key=value`` of ``wanted``."""
    labels = labels or {}
    for w in wanted:
        k, eq, v = w.partition("=")
        if k not in labels or (eq and labels[k] != v):
            return False
    return True


__all__ = ["Context", "ControlError", "Filters", "ManagerStatus", "Obj", "check_filters", "commit",
           "labels_match", "node_names", "resolve", "service_names", "spec", "task_names"]
