"""The service routes: ``GET /services``, ``POST /services/create``, ``GET /services/{id}``,
``POST /services/{id}/update``, ``DELETE /services/{id}`` (through the control API,
:mod:`manager.controlapi.services`), ``GET /services/{id}/logs``, and Shoal's dry runs
``POST /services/plan`` and ``POST /services/{id}/plan`` (:mod:`manager.controlapi.plan`)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from manager.controlapi import plan, services
from manager.controlapi.control import Control
from shoal.daemon.http.common import parse_filters, query_bool, query_version, route
from shoal.daemon.http.errors import read_json
from shoal.daemon.http.logs import Obj, write_logs


def add_routes(app: web.Application, manager: Any) -> None:
    """Register the service routes, served from ``manager`` (its ``store`` and
    ``read_logs_page``; writes through :class:`manager.controlapi.control.Control`)."""

    @route(app, "GET", "/services")
    async def service_list(request: web.Request) -> web.StreamResponse:
        """GET /services?filters=&status= (filters: id, name, label, mode)."""
        return web.json_response(services.list_services(
            manager.store, parse_filters(request.query.get("filters")), query_bool(request, "status")))

    @route(app, "POST", "/services/create")
    async def service_create(request: web.Request) -> web.StreamResponse:
        """POST /services/create with a ServiceSpec → 201 {"ID", "Warnings"}."""
        body = await read_json(request, empty_is_object=False)
        return web.json_response(await Control(manager).call("services.create", {"spec_body": body}), status=201)

    @route(app, "POST", "/services/plan")
    async def service_plan_create(request: web.Request) -> web.StreamResponse:
        """POST /services/plan with a ServiceSpec → 200 {"Tasks", "Warnings"}: where
        ``services/create`` would place each task now, writing nothing (Shoal's, for
        ``shoal service create --dry-run``; docs/contracts.md)."""
        body = await read_json(request, empty_is_object=False)
        return web.json_response(plan.plan_create(manager.store, spec_body=body))

    @route(app, "POST", "/services/{id}/plan")
    async def service_plan_update(request: web.Request) -> web.StreamResponse:
        """POST /services/{id}/plan with a ServiceSpec → 200 {"Tasks", "Warnings"}: where the
        service's tasks would be once ``services/{id}/update`` with it is done, writing nothing
        (``shoal service update --dry-run``)."""
        body = await read_json(request, empty_is_object=False)
        return web.json_response(plan.plan_update(manager.store, ref=request.match_info["id"], spec_body=body))

    @route(app, "GET", "/services/{id}")
    async def service_inspect(request: web.Request) -> web.StreamResponse:
        """GET /services/{id}?insertDefaults=: by ID, name or ID prefix."""
        return web.json_response(services.inspect(manager.store, request.match_info["id"],
                                                  query_bool(request, "insertDefaults")))

    @route(app, "DELETE", "/services/{id}")
    async def service_remove(request: web.Request) -> web.StreamResponse:
        """DELETE /services/{id}."""
        await Control(manager).call("services.remove", {"ref": request.match_info["id"]})
        return web.Response(status=200)

    @route(app, "POST", "/services/{id}/update")
    async def service_update(request: web.Request) -> web.StreamResponse:
        """POST /services/{id}/update?version=&rollback= with a ServiceSpec → {"Warnings"}."""
        version = query_version(request)
        body = await read_json(request, empty_is_object=False)
        return web.json_response(await Control(manager).call("services.update", {
            "ref": request.match_info["id"], "version": version, "spec_body": body,
            "rollback": request.query.get("rollback") == "previous"}))

    @route(app, "GET", "/services/{id}/logs")
    async def service_logs(request: web.Request) -> web.StreamResponse:
        """GET /services/{id}/logs?details&follow&stdout&stderr&since&timestamps&tail."""
        sid = str(services.find(manager.store, request.match_info["id"])["ID"])

        def tasks_now() -> list[Obj] | None:
            return services.tasks_of(manager.store, sid)

        return await write_logs(request, manager, tasks_now)
