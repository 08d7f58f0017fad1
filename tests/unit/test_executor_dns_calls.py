"""Unit tests of the executor's embedded DNS wiring (issue 9): the table follows the pushes, an
overlay task's resolv.conf and its resolver endpoint (the real Resolver, on loopback sockets made by
the test double of worker.dns.open_dns_sockets instead of 127.0.0.11 in a namespace)."""

from __future__ import annotations

import socket
from typing import Any

import dns.asyncquery
import dns.message
import dns.rcode
import pytest

from agent_runtime.bundle import resolv_conf_text
from overlaynet.dns.records import NetworkRecords, ServiceRecord, TaskRecord
from tests.unit.test_executor_overlay_calls import (
    NET_A,
    NET_B,
    OVNODE,
    TID,
    TID2,
    OvEnv,
    overlay_task,
    peers_msg,
)
from tests.unit.test_executor_states import StateTestDouble, make_task
from tests.waiting import wait_until as until
from worker import dns as wdns
from worker import overlay as ov
from worker.executor import Executor, container_id_for


def with_dns(entry: dict[str, Any], services: list[dict[str, Any]], tasks: list[dict[str, Any]]) -> dict[str, Any]:
    return {**entry, "DNS": {"Services": services, "Tasks": tasks}}


API = {"Name": "api", "Aliases": ["backend"], "VIP": None}
API_TASKS = [{"Service": "api", "Slot": 1, "ID": "t1", "IP": "10.0.1.5", "Hostname": None},
             {"Service": "api", "Slot": 2, "ID": "t2", "IP": "10.0.1.6/24", "Hostname": "h2"}]


async def query(ep: Any, name: str) -> dns.message.Message:
    host, port = ep.udp_address
    return await dns.asyncquery.udp(dns.message.make_query(name, "A"), host, port=port, timeout=3)


def ips(resp: dns.message.Message) -> list[str]:
    return sorted(r.address for rrset in resp.answer for r in rrset)


def test_dns_records_from_the_push() -> None:
    recs = ov.dns_records(NET_A, with_dns(peers_msg(NET_A), [API, {"Name": "db", "VIP": "10.0.1.2"}],
                                          [*API_TASKS, {"Service": "api", "ID": "bad", "IP": "nope"}]))
    assert recs == NetworkRecords(NET_A, (ServiceRecord("api", None, ("backend",)), ServiceRecord("db", "10.0.1.2")),
                                  (TaskRecord("api", 1, "t1", "10.0.1.5"), TaskRecord("api", 2, "t2", "10.0.1.6", "h2")),
                                  name="front")  # the network's name: the last label of PTR answers
    assert ov.dns_records(NET_A, peers_msg(NET_A)) == NetworkRecords(NET_A)  # an older manager: no records
    assert ov.dns_records(NET_A, {"DNS": "junk"}) == NetworkRecords(NET_A)


async def test_push_replaces_records_and_drops_unlisted_networks() -> None:
    e = OvEnv()
    nets = {NET_A: with_dns(peers_msg(NET_A), [API], API_TASKS), NET_B: peers_msg(NET_B)}
    await e.ex.set_assignments(OVNODE, [], nets)
    assert e.ex.dns_table.network_ids() == {NET_A, NET_B}
    assert e.ex.dns_table.records(NET_B) == NetworkRecords(NET_B)
    got = e.ex.dns_table.lookup("api", [NET_A])
    assert got is not None and sorted(r.to_text() for r in got) == ["10.0.1.5", "10.0.1.6"]

    await e.ex.set_assignments(OVNODE, [], {NET_A: with_dns(peers_msg(NET_A), [API], API_TASKS[:1])})
    assert e.ex.dns_table.network_ids() == {NET_A}
    got = e.ex.dns_table.lookup("tasks.api", [NET_A])
    assert got is not None and [r.to_text() for r in got] == ["10.0.1.5"]

    await e.ex.set_assignments(OVNODE, [], None)  # no networks sent: nothing changes
    assert e.ex.dns_table.network_ids() == {NET_A}
    await e.ex.set_assignments(OVNODE, [], {})
    assert e.ex.dns_table.network_ids() == frozenset()
    await e.ex.close()


async def test_overlay_task_gets_the_embedded_dns_until_removed() -> None:
    e = OvEnv()
    t = overlay_task(TID, (NET_B, "10.0.2.5/24"), (NET_A, "10.0.1.7/24"))
    t["Spec"]["ContainerSpec"]["DNSConfig"] = {"Search": ["example.org"], "Options": ["timeout:2"]}
    nets = {NET_A: with_dns(peers_msg(NET_A), [API], API_TASKS), NET_B: peers_msg(NET_B)}
    await e.ex.set_assignments(OVNODE, [t], nets)
    await until(lambda: e.states(TID)[-1:] == ["running"])
    cid = container_id_for(TID)
    spec = e.runtime.specs[cid]
    assert (spec.dns, spec.dns_search, spec.dns_options) == (["127.0.0.11"], ["example.org"], ["ndots:0", "timeout:2"])
    text = resolv_conf_text(spec.dns, spec.dns_search, spec.dns_options, "nameserver 127.0.0.53\nsearch lan\n")
    assert text == "nameserver 127.0.0.11\nsearch example.org\noptions ndots:0 timeout:2\n"
    assert e.dns_netns == [spec.netns]
    ctl = e.ex._controllers[TID]
    ep = ctl._dns_ep
    assert ep is not None and ep.networks == (NET_B, NET_A)  # attach order
    resp = await query(ep, "api")
    assert resp.rcode() == dns.rcode.NOERROR and ips(resp) == ["10.0.1.5", "10.0.1.6"]
    assert ips(await query(ep, "tasks.backend")) == ["10.0.1.5", "10.0.1.6"]

    await e.ex.set_assignments(OVNODE, [{**t, "DesiredState": "remove"}], nets)
    await until(lambda: TID not in e.ex.task_states())
    assert ep.closed and ctl._dns_ep is None
    await e.ex.close()


async def test_task_without_overlay_has_no_embedded_dns() -> None:
    e = OvEnv()
    t = make_task(TID2)
    t["Spec"]["ContainerSpec"]["DNSConfig"] = {"Nameservers": ["9.9.9.9"], "Options": ["ndots:2"]}
    await e.ex.set_assignments(OVNODE, [t], {})
    await until(lambda: e.states(TID2)[-1:] == ["running"])
    spec = e.runtime.specs[container_id_for(TID2)]
    assert (spec.dns, spec.dns_search, spec.dns_options) == (["9.9.9.9"], [], ["ndots:2"])
    assert e.dns_netns == [] and e.ex._controllers[TID2]._dns_ep is None
    await e.ex.close()


async def test_dns_setup_failure_rejects_the_task_and_releases() -> None:
    e = OvEnv()

    def broken(netns_path: str) -> tuple[socket.socket, socket.socket]:
        raise OSError(99, "Cannot assign requested address")

    e.ex._dns_sockets = broken
    await e.ex.set_assignments(OVNODE, [overlay_task(TID, (NET_A, "10.0.1.5/24"))], {NET_A: peers_msg(NET_A)})
    await until(lambda: e.states(TID)[-1:] == ["rejected"])
    err = e.last(TID)["Err"]
    assert "embedded DNS" in err and "127.0.0.11:53" in err and "Cannot assign requested address" in err
    assert ("detach", NET_A, TID) in e.driver.calls
    assert container_id_for(TID) not in e.runtime.specs
    await e.ex.close()


async def test_recovered_running_container_gets_its_embedded_dns_back() -> None:
    e = OvEnv()
    cid = container_id_for(TID)
    e.runtime.containers[cid] = StateTestDouble(cid, "running", pid=777, labels={"com.docker.swarm.task.id": TID})
    await e.ex.recover()
    await until(lambda: e.states(TID)[-1:] == ["running"])
    t = overlay_task(TID, (NET_A, "10.0.1.5/24"))
    t["Status"]["State"] = "running"
    await e.ex.set_assignments(OVNODE, [t], {NET_A: with_dns(peers_msg(NET_A), [API], API_TASKS)})
    await until(lambda: e.dns_netns == ["/proc/777/ns/net"])
    ep = e.ex._controllers[TID]._dns_ep
    assert ep is not None and ep.networks == (NET_A,)
    assert ips(await query(ep, "api")) == ["10.0.1.5", "10.0.1.6"]
    await e.ex.set_assignments(OVNODE, [{**t, "DesiredState": "remove"}])
    await until(lambda: TID not in e.ex.task_states())
    assert ep.closed and e.dns_netns == ["/proc/777/ns/net"]
    await e.ex.close()


async def test_executor_close_closes_the_resolver() -> None:
    closed: list[bool] = []

    class ResolverDouble:
        table = None

        async def close(self) -> None:
            closed.append(True)

    e = OvEnv()
    ex = Executor(e.runtime, e.images, e.bridge, e.report, resolver=ResolverDouble())
    await ex.close()
    assert closed == [True]


@pytest.mark.parametrize(("given", "want"), [([], ["ndots:0"]), (["ndots:3", "rotate"], ["ndots:3", "rotate"]),
                                             (["attempts:2"], ["ndots:0", "attempts:2"])])
def test_dns_options(given: list[str], want: list[str]) -> None:
    assert wdns.dns_options(given) == want
