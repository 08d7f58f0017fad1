"""The `shoal` CLI's placement flags, with the docker CLI's names and meanings:
``service create --placement-pref --replicas-max-per-node --reserve-cpu --reserve-memory
--dry-run``, ``service update --constraint-add/-rm --placement-pref-add/-rm … --dry-run``, and
``node update --label-add/--label-rm`` (against a canned Engine API endpoint)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from shoal.cli import commands as cli
from tests.unit.test_cli import NODE, _service, _task, api, run

__all__ = ["api"]  # the canned endpoint fixture, used by name below


def parse(line: str) -> Any:
    return cli.build_parser().parse_args(line.split())


def test_create_placement_and_reservation_flags() -> None:
    a = parse("service create --name web --constraint node.role==worker --placement-pref spread=node.labels.zone "
              "--placement-pref spread=node.labels.rack --replicas-max-per-node 2 --reserve-cpu 0.25 "
              "--reserve-memory 64M busybox")
    tt = cli.build_service_spec(a)["TaskTemplate"]
    assert tt["Placement"] == {"Constraints": ["node.role==worker"], "MaxReplicas": 2, "Preferences": [
        {"Spread": {"SpreadDescriptor": "node.labels.zone"}}, {"Spread": {"SpreadDescriptor": "node.labels.rack"}}]}
    assert tt["Resources"]["Reservations"] == {"NanoCPUs": 250_000_000, "MemoryBytes": 64 << 20}


@pytest.mark.parametrize(("flags", "message"), [
    ("--placement-pref spread", 'placement preference must be of the format "<strategy>=<arg>"'),
    ("--placement-pref spread=", 'placement preference must be of the format "<strategy>=<arg>"'),
    ("--placement-pref pack=node.labels.zone", "unsupported placement preference pack (only spread is supported)"),
    ("--replicas-max-per-node -1", "--replicas-max-per-node"),
    ("--reserve-memory lots", "lots"),
    ("--reserve-cpu x", "x"),
])
def test_create_bad_placement_flags(flags: str, message: str) -> None:
    with pytest.raises(cli.UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        cli.build_service_spec(parse(f"service create {flags} busybox"))


def test_update_placement_flags_as_the_docker_cli() -> None:
    spec = _service(2)["Spec"]
    spec["TaskTemplate"]["Placement"] = {"Constraints": ["node.role==worker", "node.labels.a==1"],
                                         "Preferences": [{"Spread": {"SpreadDescriptor": "node.labels.zone"}}]}
    a = parse("service update --constraint-add node.labels.b==2 --constraint-rm node.labels.a==1 "
              "--placement-pref-rm spread=node.labels.zone --placement-pref-add spread=node.labels.rack "
              "--replicas-max-per-node 3 --reserve-cpu 1 --reserve-memory 1G web")
    out = cli.update_service_spec(None, copy.deepcopy(spec), a)  # type: ignore[arg-type]
    # constraints: added, the removed ones taken out, sorted (docker/cli's updatePlacementConstraints)
    assert out["TaskTemplate"]["Placement"] == {
        "Constraints": ["node.labels.b==2", "node.role==worker"], "MaxReplicas": 3,
        "Preferences": [{"Spread": {"SpreadDescriptor": "node.labels.rack"}}]}
    assert out["TaskTemplate"]["Resources"]["Reservations"] == {"NanoCPUs": 1_000_000_000, "MemoryBytes": 1 << 30}
    # no placement flag: the placement is left as it is
    same = cli.update_service_spec(None, copy.deepcopy(spec), parse("service update --replicas 4 web"))  # type: ignore[arg-type]
    assert same["TaskTemplate"]["Placement"] == spec["TaskTemplate"]["Placement"]
    # --replicas-max-per-node 0 lifts the limit
    zero = cli.update_service_spec(None, copy.deepcopy(out), parse("service update --replicas-max-per-node 0 web"))  # type: ignore[arg-type]
    assert zero["TaskTemplate"]["Placement"]["MaxReplicas"] == 0


PLAN = {"Tasks": [{"Slot": 1, "NodeID": "n1", "Node": "h1"}, {"Slot": 2, "NodeID": "n2", "Node": "h2"},
                  {"Slot": 3, "Error": "no suitable node (insufficient resources on 2 nodes)"}], "Warnings": []}


def test_create_dry_run_prints_the_plan_and_creates_nothing(api: tuple[str, dict[Any, Any]]) -> None:
    host, routes = api
    routes[("POST", "/services/plan")] = lambda q, b: (200, PLAN)
    rc, out = run(host, "service", "create", "--dry-run", "--name", "web", "--replicas", "3", "--reserve-cpu", "2",
                  "busybox")
    assert rc == 1  # a task would stay pending
    assert out.splitlines() == [
        "TASK    NODE   PLACEMENT",
        "web.1   h1     new",
        "web.2   h2     new",
        "web.3   -      pending: no suitable node (insufficient resources on 2 nodes)",
        "dry run: 2 of 3 tasks placed, nothing was written",
    ]
    posts = [r for r in routes["log"] if r[0] == "POST"]
    assert [p[1] for p in posts] == ["/services/plan"]
    assert json.loads(posts[0][3])["TaskTemplate"]["Resources"]["Reservations"] == {"NanoCPUs": 2_000_000_000}


def test_update_dry_run_posts_the_new_spec_to_the_plan_route(api: tuple[str, dict[Any, Any]]) -> None:
    host, routes = api
    svc = _service(2)
    routes[("GET", "/services/web")] = lambda q, b: (200, svc)
    plan = {"Tasks": [{"Slot": 1, "NodeID": "n1", "Node": "h1", "Unchanged": True},
                      {"Slot": 2, "NodeID": "n2", "Node": "h2"}], "Warnings": []}
    routes[("POST", f"/services/{svc['ID']}/plan")] = lambda q, b: (200, plan)
    rc, out = run(host, "service", "update", "--dry-run", "--constraint-add", "node.labels.zone==eu", "web")
    assert rc == 0
    assert "web.1   h1     unchanged" in out and "web.2   h2     new" in out
    posts = [r for r in routes["log"] if r[0] == "POST"]
    assert [p[1] for p in posts] == [f"/services/{svc['ID']}/plan"]
    assert json.loads(posts[0][3])["TaskTemplate"]["Placement"] == {"Constraints": ["node.labels.zone==eu"]}


def test_node_update_label_add_and_rm(api: tuple[str, dict[Any, Any]], capsys: pytest.CaptureFixture[str]) -> None:
    host, routes = api
    node = copy.deepcopy(NODE)
    node["Spec"]["Labels"] = {"zone": "eu", "old": "1"}
    routes[("GET", "/nodes/h1")] = lambda q, b: (200, node)
    routes[("POST", f"/nodes/{node['ID']}/update")] = lambda q, b: (200, None)
    rc, out = run(host, "node", "update", "--label-add", "zone=us", "--label-add", "ssd", "--label-rm", "old", "h1")
    assert (rc, out) == (0, "h1\n")
    method, _, query, body = routes["log"][-1]
    assert method == "POST" and "version=7" in query
    assert json.loads(body)["Labels"] == {"zone": "us", "ssd": ""}
    # removing a label the node lacks fails before any write, in the docker CLI's words
    n = len(routes["log"])
    assert run(host, "node", "update", "--label-rm", "nope", "h1")[0] == 1
    assert "key nope doesn't exist in node's labels" in capsys.readouterr().err
    assert not [r for r in routes["log"][n:] if r[0] == "POST"]


def test_service_ps_shows_why_a_task_is_pending(api: tuple[str, dict[Any, Any]]) -> None:
    """The scheduler's reason is in the ERROR column: cut to 30 characters as the docker CLI
    cuts it, and whole with ``--no-trunc`` (the stored message itself is never cut)."""
    host, routes = api
    why = "no suitable node (insufficient resources on 2 nodes; scheduling constraints not satisfied on 1 node)"
    svc = _service(2)
    routes[("GET", "/services/web")] = lambda q, b: (200, svc)
    routes[("GET", "/tasks")] = lambda q, b: (200, [_task(1, "running"), _task(2, "pending", err=why, node="")])
    routes[("GET", "/nodes")] = lambda q, b: (200, [NODE])
    rc, out = run(host, "service", "ps", "web")
    assert rc == 0, out
    row = next(line for line in out.splitlines() if "web.2" in line)
    assert "Pending" in row and '"no suitable node (insufficien…"' in row
    rc, out = run(host, "service", "ps", "--no-trunc", "web")
    row = next(line for line in out.splitlines() if "web.2" in line)
    assert f'"{why}"' in row


@pytest.mark.parametrize("availability", ["active", "pause", "drain"])
def test_node_update_availability(api: tuple[str, dict[Any, Any]], availability: str) -> None:
    host, routes = api
    node = copy.deepcopy(NODE)
    node["Spec"]["Labels"] = {"zone": "eu"}
    routes[("GET", "/nodes/h1")] = lambda q, b: (200, node)
    routes[("POST", f"/nodes/{node['ID']}/update")] = lambda q, b: (200, None)
    rc, out = run(host, "node", "update", "--availability", availability, "h1")
    assert (rc, out) == (0, "h1\n")
    method, _, query, body = routes["log"][-1]
    assert method == "POST" and "version=7" in query
    # only the availability changes; the labels stay
    assert json.loads(body) == {**node["Spec"], "Availability": availability}


def test_global_dry_run_names_tasks_by_node(api: tuple[str, dict[Any, Any]]) -> None:
    """A global service's plan has one row per node, named ``service.NODEID`` as `service ps`
    names global tasks."""
    host, routes = api
    plan = {"Tasks": [{"NodeID": "n1", "Node": "h1"},
                      {"NodeID": "n2", "Node": "h2", "Error": "no suitable node (1 node not available for new tasks)"}],
            "Warnings": []}
    routes[("POST", "/services/plan")] = lambda q, b: (200, plan)
    rc, out = run(host, "service", "create", "--dry-run", "--name", "agent", "--mode", "global", "busybox")
    assert rc == 1
    assert "agent.n1   h1     new" in out
    assert "agent.n2   h2     pending: no suitable node (1 node not available for new tasks)" in out
