"""Control API calls on the swarm (the cluster object): inspect, update (with join-token
rotation)."""

from __future__ import annotations

from typing import Any

from manager.controlapi.common import Context, Obj, commit, spec
from manager.controlapi.errors import InvalidArgument, NotFound, Unimplemented
from manager.specs import validate_swarm_spec
from manager.store import WriteTx


def inspect(ctx: Context) -> Obj:
    """``cluster.inspect``: Docker's ``Swarm`` object (``ClusterInfo`` + ``JoinTokens``): ``ID``,
    ``Version {"Index"}``, ``CreatedAt``/``UpdatedAt`` (RFC 3339), ``Spec`` (SwarmSpec),
    ``TLSInfo``, ``RootRotationInProgress``, ``DefaultAddrPool``, ``SubnetSize``,
    ``DataPathPort``, ``JoinTokens {"Worker", "Manager"}``. Raises nothing of its own."""
    view = ctx.store.view()
    cid = ctx.cluster_id
    c = view.get("cluster", cid) if cid else None
    if c is None:
        clusters = view.list("cluster")
        c = clusters[0] if clusters else {"ID": cid}
    return {
        "ID": c.get("ID", cid),
        "Version": c.get("Version", {"Index": 0}),
        "CreatedAt": c.get("CreatedAt", ""),
        "UpdatedAt": c.get("UpdatedAt", ""),
        "Spec": c.get("Spec") or {},
        "TLSInfo": c.get("TLSInfo") or {"TrustRoot": ctx.ca_cert_pem, "CertIssuerSubject": "",
                                         "CertIssuerPublicKey": ""},
        "RootRotationInProgress": bool(c.get("RootRotationInProgress", False)),
        "DefaultAddrPool": c.get("DefaultAddrPool", ["10.0.0.0/8"]),
        "SubnetSize": c.get("SubnetSize", 24),
        "DataPathPort": c.get("DataPathPort", 4789),
        "JoinTokens": ctx.join_tokens(),
    }


async def update(ctx: Context, *, version: int, spec_body: Any, rotate_worker_token: bool = False,
                 rotate_manager_token: bool = False, rotate_manager_unlock_key: bool = False) -> None:
    """``cluster.update``: replace the SwarmSpec (``spec_body``, validated by
    :func:`manager.specs.validate_swarm_spec`) at ``version`` (the ``Version.Index`` read), and
    rotate the join tokens asked for (``ctx.rotate_join_token(role)``; the new tokens revoke the
    old ones). Raises :class:`InvalidArgument` (bad spec; ``rotate_manager_unlock_key``: autolock
    is not supported), :class:`Unimplemented` (no token rotation on this manager),
    :class:`NotFound` (no cluster), :class:`Unknown` (``version`` out of sequence),
    :class:`Unavailable`."""
    swarm_spec = spec(validate_swarm_spec, spec_body)
    rotate = [r for r, on in (("worker", rotate_worker_token), ("manager", rotate_manager_token)) if on]
    if rotate_manager_unlock_key:
        raise InvalidArgument("autolock is not supported by shoal")
    rotate_fn = getattr(ctx, "rotate_join_token", None) if rotate else None
    if rotate and rotate_fn is None:
        raise Unimplemented("join token rotation is not supported by this manager")
    new_tokens: dict[str, str] = {}
    for role in rotate:
        assert rotate_fn is not None
        new_tokens[role.capitalize()] = rotate_fn(role)
    cid = ctx.cluster_id

    def fn(tx: WriteTx) -> None:
        c = tx.get("cluster", cid)
        if c is None:
            raise NotFound(f"cluster {cid} not found")
        c["Version"] = {"Index": version}
        c["Spec"] = swarm_spec
        if new_tokens:
            jt = dict(c.get("JoinTokens") or {})
            jt.update(new_tokens)
            c["JoinTokens"] = jt
        tx.update("cluster", c)

    await commit(ctx.store, fn)
