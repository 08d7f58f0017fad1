"""The image-platform filter (``Placement.Platforms``, swarmkit's PlatformFilter) and the
``node.ip`` constraint: which nodes pass, the explanation a pending task gets, and the 400s a
bad constraint gets, each naming the expression at fault."""

from __future__ import annotations

import re
from typing import Any

import pytest

from manager.scheduler import Pipeline, PlatformFilter, build_node_infos, node_matches, schedule
from manager.scheduler.filters import normalize_arch, platform_matches
from manager.specs import SpecError, parse_constraint, validate_service_spec
from manager.specs.container import validate_placement
from tests.unit.test_scheduler_filters import node, task


def with_platforms(t: dict[str, Any], *platforms: tuple[str, str]) -> dict[str, Any]:
    """``t`` with ``Spec.Placement.Platforms`` set to ``[(os, arch), …]``."""
    t["Spec"]["Placement"]["Platforms"] = [{"OS": os, "Architecture": arch} for os, arch in platforms]
    return t


def addressed(n: dict[str, Any], addr: str) -> dict[str, Any]:
    """The API Node ``n`` with ``Status.Addr`` ``addr``."""
    n["Status"]["Addr"] = addr
    return n


NODES = [node("amd", arch="x86_64"), node("arm", arch="aarch64"), node("win", os="windows", arch="x86_64"),
         node("s390", arch="s390x")]


@pytest.mark.parametrize(("platforms", "hosts"), [
    ([("linux", "amd64")], {"amd"}),  # the image index says amd64, the node x86_64
    ([("linux", "arm64")], {"arm"}),
    ([("linux", "amd64"), ("linux", "arm64")], {"amd", "arm"}),
    ([("windows", "amd64")], {"win"}),
    ([("", "amd64")], {"amd", "win"}),  # an empty field matches any
    ([("linux", "")], {"amd", "arm", "s390"}),
    ([("linux", "riscv64")], set()),
])
def test_platform_filter_as_swarmkit(platforms: list[tuple[str, str]], hosts: set[str]) -> None:
    ns = build_node_infos(NODES, [])
    f = PlatformFilter()
    assert f.set_task(with_platforms(task("t"), *platforms))
    assert {n.id for n in ns if f.check(n)} == hosts
    dec = schedule(ns, [with_platforms(task("t"), *platforms)])
    if hosts:
        assert dec.placed["t"] in hosts
    else:
        assert dec.failed["t"] == "no suitable node (unsupported platform on 4 nodes)"


def test_platform_filter_only_applies_to_tasks_listing_platforms() -> None:
    assert not PlatformFilter().set_task(task("t"))
    ns = build_node_infos(NODES, [])
    assert len(schedule(ns, [task(f"t{i}", slot=i) for i in range(1, 5)]).placed) == 4


def test_platform_counts_after_constraints_in_the_explanation() -> None:
    """A node is counted against the first filter it fails, in swarmkit's order (ready,
    resources, constraints, platforms, host ports, max replicas)."""
    ns = build_node_infos([*NODES, node("down", state="down")], [])
    t = with_platforms(task("t", constraints=["node.platform.os==linux"]), ("linux", "riscv64"))
    assert schedule(ns, [t]).failed["t"] == ("no suitable node (unsupported platform on 3 nodes; 1 node not "
                                             "available for new tasks; scheduling constraints not satisfied "
                                             "on 1 node)")


def test_arch_names_normalised() -> None:
    assert normalize_arch("x86_64") == "amd64" and normalize_arch("aarch64") == "arm64"
    assert normalize_arch("arm") == "arm"
    assert platform_matches({"Architecture": "x86_64", "OS": "linux"}, "linux", "amd64")
    assert not platform_matches({"Architecture": "amd64", "OS": "Linux"}, "linux", "amd64")  # OS exactly, as Go


@pytest.mark.parametrize(("expr", "hosts"), [
    ("node.ip==10.0.0.5", {"a"}),
    ("node.ip!=10.0.0.5", {"b", "c", "none"}),
    ("node.ip==10.0.0.0/24", {"a", "b"}),
    ("node.ip!=10.0.0.0/24", {"c", "none"}),  # a node without an address is in no network
    ("node.ip==fd00::1", {"c"}),
    ("NODE.IP==fd00::/64", {"c"}),
])
def test_node_ip_constraint(expr: str, hosts: set[str]) -> None:
    ns = build_node_infos([addressed(node("a"), "10.0.0.5"), addressed(node("b"), "10.0.0.9"),
                           addressed(node("c"), "fd00::1"), node("none")], [])
    assert {n.id for n in ns if node_matches([parse_constraint(expr)], n)} == hosts


def test_a_stored_node_ip_that_does_not_parse_matches_no_node() -> None:
    ns = build_node_infos([addressed(node("a"), "10.0.0.5")], [])
    assert not any(node_matches([("node.ip", "!=", "not-an-ip")], n) for n in ns)


@pytest.mark.parametrize(("expr", "message"), [
    ("node.labels.zone=eu", "constraint expected one operator from ==, !=: 'node.labels.zone=eu' is not of the form "
                            "KEY==VALUE or KEY!=VALUE"),
    ("node.labels.zone", "'node.labels.zone' is not of the form KEY==VALUE"),
    ("==eu", "'==eu' is not of the form"),
    ("node.colour==red", "constraint key 'node.colour' is not supported (in 'node.colour==red'): use node.id"),
    ("node.labels.==x", "constraint key 'node.labels.' is not supported (in 'node.labels.==x')"),
    ("engine.labels.!=x", "constraint key 'engine.labels.' is not supported"),
    ("node.ip==10.0.0.300", "constraint 'node.ip==10.0.0.300': node.ip takes an IP address or a network"),
    ("node.role==", "constraint 'node.role==': value must not be empty"),
    ("node.id==" + "x" * 500 + "==y", "…' is not of the form"),  # the expression is quoted, cut short
])
def test_bad_constraint_names_the_expression(expr: str, message: str) -> None:
    with pytest.raises(SpecError) as e:
        parse_constraint(expr)
    assert message in str(e.value)
    assert len(str(e.value)) < 400
    spec = {"Name": "web", "TaskTemplate": {"ContainerSpec": {"Image": "busybox"},
                                            "Placement": {"Constraints": ["node.role==worker", expr]}}}
    with pytest.raises(SpecError, match="constraint"):
        validate_service_spec(spec)


def test_pipeline_order_is_swarmkits() -> None:
    names = [type(f).__name__ for f in Pipeline().filters]
    assert names == ["ReadyFilter", "ResourceFilter", "ConstraintFilter", "PlatformFilter", "HostPortFilter",
                     "MaxReplicasFilter"]


@pytest.mark.parametrize("platforms, words", [
    ("linux", "cannot unmarshal string into Go struct field Placement.Platforms of type []swarm.Platform"),
    (["linux"], "cannot unmarshal string into Go struct field Placement.Platforms of type swarm.Platform"),
    ([{"OS": {"a": 1}}], "cannot unmarshal object into Go struct field Platform.Placement.Platforms.OS"),
    ([{"Architecture": 7}], "cannot unmarshal number into Go struct field Platform.Placement.Platforms.Architecture"),
])
def test_malformed_platforms_are_refused_as_docker_decodes_them(platforms: Any, words: str) -> None:
    """``Placement.Platforms`` of the wrong JSON type is a 400 (SpecError), not a task pending forever."""
    with pytest.raises(SpecError, match=re.escape(words)):
        validate_placement({"Platforms": platforms})
    validate_placement({"Platforms": [{"OS": "linux", "Architecture": "amd64"}, {"OS": "linux"}]})
