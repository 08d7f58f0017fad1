"""Engine labels, dockerd's ``--label KEY=VALUE``: shoald reports them in ``Node.Description.Engine
.Labels`` (and ``GET /info``'s ``Labels``), which the ``engine.labels.KEY`` constraints and spread
preferences read."""

from __future__ import annotations

import pytest

from manager.scheduler import build_node_infos, node_matches, schedule
from manager.scheduler.spread import descriptor_value
from manager.specs import parse_constraint
from shoal.daemon.main import parse_args
from shoal.daemon.sysinfo import node_description
from tests.unit.test_scheduler_filters import task


def test_label_flag_parsed_as_dockerd() -> None:
    a = parse_args(["--label", "storage=ssd", "--label", "zone=eu=west", "--label", "empty="])
    assert a.label == [("storage", "ssd"), ("zone", "eu=west"), ("empty", "")]
    assert parse_args([]).label == []


@pytest.mark.parametrize("bad", ["storage", "=ssd", " =x"])
def test_bad_label_flag_is_refused(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--label", bad])
    assert "use KEY=VALUE, e.g. --label storage=ssd" in capsys.readouterr().err


def test_engine_labels_reach_the_scheduler() -> None:
    desc = node_description("h1", {"storage": "ssd"})
    assert desc["Engine"]["Labels"] == {"storage": "ssd"}
    assert node_description("h2")["Engine"]["Labels"] == {}
    nodes = [{"ID": "n1", "Spec": {"Role": "worker", "Availability": "active"}, "Description": desc,
              "Status": {"State": "ready"}},
             {"ID": "n2", "Spec": {"Role": "worker", "Availability": "active"},
              "Description": node_description("h2"), "Status": {"State": "ready"}}]
    ns = build_node_infos(nodes, [])
    assert [n.id for n in ns if node_matches([parse_constraint("engine.labels.storage==ssd")], n)] == ["n1"]
    assert descriptor_value("engine.labels.storage", ns.nodes["n1"]) == "ssd"
    dec = schedule(ns, [task(f"t{i}", slot=i, constraints=["engine.labels.storage!=ssd"]) for i in (1, 2)])
    assert set(dec.placed.values()) == {"n2"}
