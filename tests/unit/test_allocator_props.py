"""Property test of manager.allocator: random sequences of allocate / release / rebuild (a leader
change: the allocator is thrown away and rebuilt from the stored objects) never hand out an
address, VNI, subnet or ingress port that a stored object already holds, and a failed call takes
nothing (the live allocator always agrees with one rebuilt from the store)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from manager.allocator import Allocator, AllocatorError, network_attachment, parse_pools

POOLS = parse_pools(["10.0.0.0/26"], 28)  # 4 default subnets of 13 usable addresses
USER_SUBNETS = ["10.0.0.0/29", "10.0.0.16/28", "192.168.0.0/29", "192.168.0.0/28", "172.16.0.0/30"]
PORTS = [0, 0, 80, 8080, 30000, 30001]

op = st.one_of(
    st.tuples(st.just("net"), st.integers(0, len(USER_SUBNETS))),  # index == len: the default pool
    st.tuples(st.just("rmnet"), st.integers(0, 9)),
    st.tuples(st.just("svc"), st.sets(st.integers(0, 9), max_size=3), st.booleans(),
              st.lists(st.tuples(st.sampled_from(PORTS), st.sampled_from(["tcp", "udp"])), max_size=3)),
    st.tuples(st.just("rmsvc"), st.integers(0, 9)),
    st.tuples(st.just("task"), st.integers(0, 9)),
    st.tuples(st.just("rmtask"), st.integers(0, 30)),
    st.tuples(st.just("rebuild")),
    st.tuples(st.just("lost")),  # allocate, then the transaction fails: rebuild without writing
)


class Store:
    def __init__(self) -> None:
        self.networks: dict[str, dict[str, Any]] = {}
        self.services: dict[str, dict[str, Any]] = {}
        self.tasks: dict[str, dict[str, Any]] = {}
        self.n = 0

    def new_id(self, kind: str) -> str:
        self.n += 1
        return f"{kind}{self.n}"

    def rebuild(self) -> Allocator:
        return Allocator.from_objects(list(self.networks.values()), list(self.services.values()),
                                      list(self.tasks.values()), POOLS)

    def check(self, a: Allocator) -> None:
        import ipaddress
        subnets = [ipaddress.IPv4Network(n["IPAMOptions"]["Configs"][0]["Subnet"]) for n in self.networks.values()]
        for i, x in enumerate(subnets):
            assert not any(x.overlaps(y) for y in subnets[i + 1:]), subnets
        vnis = [n["DriverState"]["Options"]["com.docker.network.driver.overlay.vxlanid_list"]
                for n in self.networks.values()]
        assert len(vnis) == len(set(vnis))
        addrs: list[tuple[str, str]] = []
        ports: list[tuple[str, int]] = []
        for s in self.services.values():
            addrs += [(v["NetworkID"], v["Addr"].split("/")[0]) for v in s["Endpoint"]["VirtualIPs"]]
            ports += [(p["Protocol"], p["PublishedPort"]) for p in s["Endpoint"]["Ports"]
                      if p["PublishMode"] == "ingress"]
        for t in self.tasks.values():
            addrs += [(att["Network"]["ID"], x.split("/")[0]) for att in t["NetworksAttachments"]
                      for x in att["Addresses"]]
        assert len(addrs) == len(set(addrs)), addrs
        assert len(ports) == len(set(ports)), ports
        for nid, n in self.networks.items():
            gw = n["IPAMOptions"]["Configs"][0]["Gateway"]
            assert (nid, gw) not in addrs
        # the live allocator holds exactly what the store holds (failed calls took nothing)
        b = self.rebuild()
        for nid in self.networks:
            assert a.addresses_in_use(nid) == b.addresses_in_use(nid), nid
            assert a.network(nid) == b.network(nid)
        for sid in self.services:
            assert a._ports.ports_of(sid) == b._ports.ports_of(sid)


def _run(ops: list[tuple[Any, ...]]) -> None:
    st_ = Store()
    a = st_.rebuild()
    for o in ops:
        kind = o[0]
        try:
            if kind == "net":
                nid = st_.new_id("n")
                spec: dict[str, Any] = {"Name": nid}
                if o[1] < len(USER_SUBNETS):
                    spec["IPAM"] = {"Config": [{"Subnet": USER_SUBNETS[o[1]]}]}
                got = a.allocate_network(nid, spec)
                st_.networks[nid] = {"ID": nid, "Spec": {"Name": nid}, "DriverState": got.driver_state(),
                                     "IPAMOptions": got.ipam_options()}
            elif kind == "rmnet":
                ids = sorted(st_.networks)
                if ids:
                    nid = ids[o[1] % len(ids)]
                    used = any(v["NetworkID"] == nid for s in st_.services.values() for v in s["Endpoint"]["VirtualIPs"])
                    used |= any(att["Network"]["ID"] == nid for t in st_.tasks.values() for att in t["NetworksAttachments"])
                    used |= any(nid in str(s["Spec"]) for s in st_.services.values())
                    if not used:  # the control API refuses to remove a network in use
                        a.deallocate_network(nid)
                        del st_.networks[nid]
            elif kind == "svc":
                ids = sorted(st_.networks)
                nets = sorted({ids[i % len(ids)] for i in o[1]}) if ids else []
                sid = st_.new_id("s")
                ports = [{"TargetPort": 80 + i, "PublishedPort": p, "Protocol": proto} for i, (p, proto) in enumerate(o[3])]
                svc: dict[str, Any] = {"ID": sid, "Spec": {"Name": sid, "TaskTemplate": {
                    "Networks": [{"Target": n} for n in nets]}, "EndpointSpec": {
                        "Mode": "vip" if o[2] else "dnsrr", "Ports": ports if o[2] else []}}}
                svc["Endpoint"] = a.allocate_service(svc)
                st_.services[sid] = svc
            elif kind == "rmsvc":
                ids = sorted(st_.services)
                if ids:
                    sid = ids[o[1] % len(ids)]
                    for tid in [t for t, x in st_.tasks.items() if x["ServiceID"] == sid]:
                        a.deallocate_task(st_.tasks.pop(tid))
                    a.deallocate_service(st_.services.pop(sid))
            elif kind == "task":
                ids = sorted(st_.services)
                if ids:
                    svc = st_.services[ids[o[1] % len(ids)]]
                    tid = st_.new_id("t")
                    task: dict[str, Any] = {"ID": tid, "ServiceID": svc["ID"], "Spec": {}, "NetworksAttachments": []}
                    got_t = a.allocate_task(task, svc)
                    task["NetworksAttachments"] = [network_attachment(st_.networks[n], x) for n, x in got_t.items()]
                    st_.tasks[tid] = task
            elif kind == "rmtask":
                ids = sorted(st_.tasks)
                if ids:
                    a.deallocate_task(st_.tasks.pop(ids[o[1] % len(ids)]))
            elif kind == "rebuild":
                a = st_.rebuild()
                assert a.problems == []
            elif kind == "lost":
                if st_.networks:
                    try:
                        a.allocate_address(sorted(st_.networks)[0])
                    except AllocatorError:
                        pass
                try:
                    a.allocate_network(st_.new_id("n"), {})
                finally:
                    a = st_.rebuild()
        except AllocatorError:
            pass
        st_.check(a)


@settings(max_examples=300, deadline=None)
@given(st.lists(op, max_size=40))
def test_random_sequences_never_duplicate(ops: list[tuple[Any, ...]]) -> None:
    _run(ops)


def test_fixed_sequence_fills_and_rebuilds() -> None:
    ops: list[tuple[Any, ...]] = [("net", 0), ("net", 5), ("svc", {0, 1}, True, [(0, "tcp"), (8080, "tcp")])]
    ops += [("task", 0)] * 20 + [("rebuild",)] + [("rmtask", 3), ("task", 0), ("lost",), ("task", 0)]
    ops += [("svc", {1}, True, [(8080, "tcp"), (8080, "udp")]), ("rmsvc", 0), ("rebuild",), ("task", 0)]
    _run(ops)
