"""The task routes: ``GET /tasks``, ``GET /tasks/{id}`` (the control API,
:mod:`manager.controlapi.tasks`) and ``GET /tasks/{id}/logs``."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from manager.controlapi import tasks
from shoal.daemon.http.common import parse_filters, route
from shoal.daemon.http.logs import Obj, write_logs


def add_routes(app: web.Application, manager: Any) -> None:
    """Register the task routes, served from ``manager`` (its ``store`` and ``read_logs_page``)."""

    @route(app, "GET", "/tasks")
    async def task_list(request: web.Request) -> web.StreamResponse:
        """GET /tasks?filters= (id, name, service, node, label, desired-state, _up-to-date)."""
        return web.json_response(tasks.list_tasks(manager.store, parse_filters(request.query.get("filters"))))

    @route(app, "GET", "/tasks/{id}")
    async def task_inspect(request: web.Request) -> web.StreamResponse:
        """GET /tasks/{id}: by ID, name or unique ID prefix."""
        return web.json_response(tasks.inspect(manager.store, request.match_info["id"]))

    @route(app, "GET", "/tasks/{id}/logs")
    async def task_logs(request: web.Request) -> web.StreamResponse:
        """GET /tasks/{id}/logs (same parameters as service logs)."""
        tid = str(tasks.inspect(manager.store, request.match_info["id"])["ID"])

        def tasks_now() -> list[Obj] | None:
            return tasks.current(manager.store, tid)

        return await write_logs(request, manager, tasks_now)
