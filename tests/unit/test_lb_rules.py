"""overlaynet.lb.rules (pure) and overlaynet.lb.apply.LoadBalancer with a fake nft.

The scripts are checked three ways: by their text (one lookup, numgen mod N, stable names, only
changed services in a delta, reject for empty services), by a small model of the table that the
full script and the delta commands are replayed into (full(old) + delta(old, new) must equal
full(new), for random states), and, as root with nft installed, by ``nft -c -f`` (the kernel
validates the transaction and discards it: nothing changes)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overlaynet.lb import rules
from overlaynet.lb.apply import ConntrackError, LoadBalancer, NftError
from overlaynet.lb.rules import Endpoint, LBState, RulesError, ServiceKey, render_delta, render_full

T = "lbt-unit"
WEB = ("10.96.0.10", "tcp", 80)
DNS = ("10.96.0.11", "udp", 53)
EMPTY = ("10.96.0.12", "tcp", 81)


def state(**over: Any) -> LBState:
    base: dict[tuple[str, str, int], list[tuple[str, int]]] = {
        WEB: [("10.0.1.2", 8080), ("10.0.1.3", 8080), ("10.0.1.4", 8080)],
        DNS: [("10.0.1.5", 53), ("10.0.1.6", 53)],
        EMPTY: [],
    }
    for k, v in over.items():
        base[{"web": WEB, "dns": DNS, "empty": EMPTY}[k]] = v
    return LBState.build(base)


def key(t: tuple[str, str, int]) -> ServiceKey:
    return ServiceKey(*t)


def chain_body(script: str, name: str) -> list[str]:
    m = re.search(rf"^\tchain {re.escape(name)} {{\n(.*?)^\t}}", script, re.M | re.S)
    assert m, f"chain {name} not in script"
    return [ln.strip() for ln in m.group(1).splitlines()]


# -- a model of the table: chains → rules, maps → elements ------------------------------------


def model_of_full(script: str) -> tuple[dict[str, list[str]], dict[str, dict[str, str]]]:
    chains: dict[str, list[str]] = {}
    maps: dict[str, dict[str, str]] = {}
    cur: list[str] | None = None
    curmap: dict[str, str] | None = None
    for ln in script.splitlines():
        s = ln.strip()
        if m := re.fullmatch(r"chain (\S+) \{", s):
            cur = chains.setdefault(m.group(1), [])
        elif m := re.fullmatch(r"map (\S+) \{", s):
            curmap = maps.setdefault(m.group(1), {})
        elif s == "}":
            cur, curmap = None, None
        elif curmap is not None and s.startswith("elements = {"):
            for el in s[len("elements = {"):-1].split(","):
                k, v = el.split(" : ")
                curmap[k.strip()] = v.strip()
        elif cur is not None and not s.startswith("type "):
            cur.append(s)
    return chains, maps


def replay(model: tuple[dict[str, list[str]], dict[str, dict[str, str]]], delta: str) -> None:
    chains, maps = model
    pre = f"ip {T} "
    for ln in delta.splitlines():
        if m := re.fullmatch(rf"add chain {pre}(\S+)", ln):
            assert m.group(1) not in chains, ln
            chains[m.group(1)] = []
        elif m := re.fullmatch(rf"flush chain {pre}(\S+)", ln):
            chains[m.group(1)].clear()
        elif m := re.fullmatch(rf"delete chain {pre}(\S+)", ln):
            assert chains.pop(m.group(1)) == [], f"{ln}: chain not empty"
            referenced = " ".join(r for rs in chains.values() for r in rs) + " ".join(
                v for mp in maps.values() for v in mp.values())
            assert re.search(rf"goto {m.group(1)}\b", referenced) is None, f"{ln}: still referenced"
        elif m := re.fullmatch(rf"add rule {pre}(\S+) (.*)", ln):
            chains[m.group(1)].append(m.group(2))
        elif m := re.fullmatch(rf"add element {pre}(\S+) \{{ (.*) : (.*) \}}", ln):
            assert m.group(2) not in maps[m.group(1)], ln
            maps[m.group(1)][m.group(2)] = m.group(3)
        elif m := re.fullmatch(rf"delete element {pre}(\S+) \{{ (.*) \}}", ln):
            del maps[m.group(1)][m.group(2)]
        else:
            raise AssertionError(f"unexpected delta line {ln!r}")
    for name, rs in chains.items():  # every goto lands on an existing chain
        for r in rs:
            for target in re.findall(r"goto (\S+?)[,} ]", r + " "):
                assert target in chains, f"{name}: goto {target} dangling"


# -- the full script --------------------------------------------------------------------------


def test_full_has_one_lookup_and_hooks() -> None:
    s = render_full(state(), T)
    assert s.startswith(f"add table ip {T}\ndelete table ip {T}\ntable ip {T} {{\n")
    assert s.count("ip daddr . meta l4proto . th dport vmap @service-ips") == 1
    assert chain_body(s, "services") == [
        "ip daddr . meta l4proto . th dport vmap @service-ips", "ip daddr vmap @vip-ips",
        "fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @local-ports"]
    assert chain_body(s, "nat-prerouting") == ["type nat hook prerouting priority -100; policy accept;",
                                               "jump services"]
    assert chain_body(s, "nat-output") == ["type nat hook output priority -100; policy accept;", "jump services"]
    for hook in ("input", "forward", "output"):
        assert chain_body(s, f"filter-{hook}") == [f"type filter hook {hook} priority -110; policy accept;",
                                                   "ct state new jump endpoints-check"]


def test_full_numgen_and_dnat_per_endpoint() -> None:
    st_ = state()
    s = render_full(st_, T)
    web = key(WEB)
    eps = st_.services[web]
    svc = rules.service_chain(web)
    arms = ", ".join(f"{i} : goto {rules.endpoint_chain(web, ep)}" for i, ep in enumerate(eps))
    assert chain_body(s, svc) == [f"numgen random mod 3 vmap {{ {arms} }}"]
    assert f"10.96.0.10 . tcp . 80 : goto {svc}" in s
    for ep in eps:
        assert chain_body(s, rules.endpoint_chain(web, ep)) == [f"meta l4proto tcp dnat to {ep.ip}:8080"]
    dns = key(DNS)
    assert chain_body(s, rules.service_chain(dns))[0].startswith("numgen random mod 2 vmap {")
    assert chain_body(s, rules.endpoint_chain(dns, Endpoint("10.0.1.5", 53))) == [
        "meta l4proto udp dnat to 10.0.1.5:53"]


def test_full_rejects_a_service_without_endpoints() -> None:
    s = render_full(state(), T)
    assert chain_body(s, "reject-chain") == ["meta l4proto tcp reject with tcp reset", "reject"]
    assert chain_body(s, "endpoints-check") == [
        "ip daddr . meta l4proto . th dport vmap @no-endpoint-services", "ip daddr vmap @no-endpoint-vips",
        "fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-local-ports"]
    assert "10.96.0.12 . tcp . 81 : goto reject-chain" in s
    assert rules.service_chain(key(EMPTY)) not in s  # no nat chain for it
    assert "10.96.0.12 . tcp . 81 : goto svc" not in s


def test_full_of_an_empty_state_has_maps_without_elements() -> None:
    s = render_full(LBState(), T)
    assert "elements" not in s and "svc-" not in s and "ep-" not in s
    assert "map service-ips {" in s and "map no-endpoint-services {" in s


def test_chain_names_are_stable_bounded_and_distinct() -> None:
    web = key(WEB)
    a = rules.service_chain(web)
    assert a == rules.service_chain(ServiceKey("10.96.0.10", "TCP", 80))
    assert re.fullmatch(r"svc-[a-z2-7]{16}", a)
    assert rules.service_chain(ServiceKey("10.96.0.10", "udp", 80)) != a
    e1 = rules.endpoint_chain(web, Endpoint("10.0.1.2", 8080))
    assert re.fullmatch(r"ep-[a-z2-7]{16}", e1)
    assert e1 != rules.endpoint_chain(web, Endpoint("10.0.1.2", 8081))
    assert e1 != rules.endpoint_chain(key(DNS), Endpoint("10.0.1.2", 8080))  # per service
    # the same service renders the same chains whatever else is in the state
    s1 = render_full(state(), T)
    s2 = render_full(LBState.build({WEB: [("10.0.1.4", 8080), ("10.0.1.3", 8080), ("10.0.1.2", 8080)]}), T)
    assert chain_body(s1, a) == chain_body(s2, a)


def test_state_normalises_and_dedups_endpoints() -> None:
    a = LBState.build({("10.96.0.10", "TCP", 80): [("10.0.1.10", 1), ("10.0.1.9", 1), ("10.0.1.9", 1)]})
    b = LBState.build({WEB: [("10.0.1.9", 1), ("10.0.1.10", 1)]})
    assert a == b
    assert a.services[key(WEB)] == (Endpoint("10.0.1.9", 1), Endpoint("10.0.1.10", 1))


# -- the delta --------------------------------------------------------------------------------


def test_delta_of_equal_states_is_empty() -> None:
    assert render_delta(state(), state(), T) == ""


def test_delta_touches_only_the_changed_service() -> None:
    old = state()
    new = state(web=[("10.0.1.3", 8080), ("10.0.1.4", 8080), ("10.0.1.7", 8080)])
    d = render_delta(old, new, T)
    web = key(WEB)
    svc = rules.service_chain(web)
    gone = rules.endpoint_chain(web, Endpoint("10.0.1.2", 8080))
    added = rules.endpoint_chain(web, Endpoint("10.0.1.7", 8080))
    kept = rules.endpoint_chain(web, Endpoint("10.0.1.3", 8080))
    lines = d.splitlines()
    assert lines == [
        f"add chain ip {T} {added}",
        f"add rule ip {T} {added} meta l4proto tcp dnat to 10.0.1.7:8080",
        f"flush chain ip {T} {svc}",
        f"add rule ip {T} {svc} numgen random mod 3 vmap {{ 0 : goto {kept}, 1 : goto "
        f"{rules.endpoint_chain(web, Endpoint('10.0.1.4', 8080))}, 2 : goto {added} }}",
        f"flush chain ip {T} {gone}",
        f"delete chain ip {T} {gone}",
    ]
    for untouched in (DNS, EMPTY):
        assert untouched[0] not in d and rules.service_chain(key(untouched)) not in d
    assert "element" not in d  # the map entry of web still points at the same chain
    assert "table" not in d.replace(f"ip {T}", "")


def test_delta_service_loses_and_regains_endpoints() -> None:
    old = state()
    new = state(web=[])
    d = render_delta(old, new, T)
    svc = rules.service_chain(key(WEB))
    assert f"add element ip {T} no-endpoint-services {{ 10.96.0.10 . tcp . 80 : goto reject-chain }}" in d
    assert f"delete element ip {T} service-ips {{ 10.96.0.10 . tcp . 80 }}" in d
    assert f"delete chain ip {T} {svc}" in d
    assert d.count("delete chain") == 4  # the service chain and its 3 endpoints
    back = render_delta(new, old, T)
    assert f"delete element ip {T} no-endpoint-services {{ 10.96.0.10 . tcp . 80 }}" in back
    assert f"add element ip {T} service-ips {{ 10.96.0.10 . tcp . 80 : goto {svc} }}" in back


def test_delta_added_and_removed_services() -> None:
    old = state()
    new = LBState.build({WEB: [("10.0.1.2", 8080), ("10.0.1.3", 8080), ("10.0.1.4", 8080)],
                         ("10.96.0.20", "sctp", 9): [("10.0.2.2", 9)], ("10.96.0.21", "udp", 9): []})
    d = render_delta(old, new, T)
    assert rules.service_chain(key(WEB)) not in d
    assert f"delete element ip {T} service-ips {{ 10.96.0.11 . udp . 53 }}" in d
    assert f"delete element ip {T} no-endpoint-services {{ 10.96.0.12 . tcp . 81 }}" in d
    assert f"add element ip {T} no-endpoint-services {{ 10.96.0.21 . udp . 9 : goto reject-chain }}" in d
    assert "meta l4proto sctp dnat to 10.0.2.2:9" in d
    # adds come before removals, and a chain is flushed before it is deleted
    lines = d.splitlines()
    first_delete = min(i for i, ln in enumerate(lines) if ln.startswith("delete") or ln.startswith("flush"))
    assert all(ln.startswith("add") for ln in lines[:first_delete])


def test_replayed_delta_equals_full() -> None:
    old, new = state(), state(web=[("10.0.1.9", 8080)], dns=[], empty=[("10.0.1.2", 81)])
    model = model_of_full(render_full(old, T))
    replay(model, render_delta(old, new, T))
    assert model == model_of_full(render_full(new, T))


_ips = st.sampled_from(["10.0.1.2", "10.0.1.3", "10.0.1.4", "10.0.2.2"])
_keys = st.tuples(st.sampled_from(["10.96.0.1", "10.96.0.2"]), st.sampled_from(["tcp", "udp"]),
                  st.sampled_from([53, 80]))
_states = st.dictionaries(_keys, st.lists(st.tuples(_ips, st.sampled_from([80, 8080])), max_size=4),
                          max_size=5).map(LBState.build)
_whole = st.dictionaries(st.sampled_from(["10.96.0.1", "10.96.0.3", "10.96.0.4"]).map(ServiceKey.whole),
                         st.lists(_ips.map(lambda ip: Endpoint(ip, None)), max_size=4), max_size=3)
_local = st.dictionaries(st.tuples(st.sampled_from(["tcp", "udp"]), st.sampled_from([8080, 30000])).map(
    lambda t: ServiceKey.local(*t)), st.lists(st.tuples(_ips, st.sampled_from([80, 81])).map(
        lambda t: Endpoint(*t)), max_size=3), max_size=3)
_mixed = st.tuples(_states, _whole, _local).map(lambda t: LBState({**t[0].services, **t[1], **t[2]}))


@settings(max_examples=200, deadline=None)
@given(_states, _states)
def test_replayed_delta_equals_full_for_any_states(old: LBState, new: LBState) -> None:
    model = model_of_full(render_full(old, T))
    replay(model, render_delta(old, new, T))
    assert model == model_of_full(render_full(new, T))


@settings(max_examples=200, deadline=None)
@given(_mixed, _mixed)
def test_replayed_delta_equals_full_with_whole_vips(old: LBState, new: LBState) -> None:
    model = model_of_full(render_full(old, T))
    replay(model, render_delta(old, new, T))
    assert model == model_of_full(render_full(new, T))


# -- whole VIPs (Docker's port-agnostic VIPs) --------------------------------------------------

WHOLE = ("10.96.0.20", "any", None)


def test_whole_vip_is_one_address_lookup_and_keeps_the_port() -> None:
    st_ = LBState.build({WHOLE: [("10.0.1.2", None), ("10.0.1.3", None)], ("10.96.0.21", "any", None): []})
    s = render_full(st_, T)
    k = ServiceKey.whole("10.96.0.20")
    assert k.is_whole and k == key(WHOLE)
    svc = rules.service_chain(k)
    assert f"10.96.0.20 : goto {svc}" in s  # in vip-ips, keyed by the address alone
    assert "10.96.0.21 : goto reject-chain" in s  # no endpoints: rejected
    assert chain_body(s, svc)[0].startswith("numgen random mod 2 vmap {")
    assert chain_body(s, rules.endpoint_chain(k, Endpoint("10.0.1.2", None))) == ["dnat to 10.0.1.2"]
    chains, maps = model_of_full(s)
    assert maps["vip-ips"] == {"10.96.0.20": f"goto {svc}"}
    assert maps["no-endpoint-vips"] == {"10.96.0.21": "goto reject-chain"}
    assert maps["service-ips"] == {} and maps["no-endpoint-services"] == {}


def test_whole_vip_delta_touches_only_its_element_and_chains() -> None:
    old = LBState.build({WHOLE: [("10.0.1.2", None)], WEB: [("10.0.1.2", 8080)]})
    new = LBState.build({WHOLE: [("10.0.1.2", None), ("10.0.1.3", None)], WEB: [("10.0.1.2", 8080)]})
    d = render_delta(old, new, T)
    k = ServiceKey.whole("10.96.0.20")
    assert rules.service_chain(key(WEB)) not in d
    assert f"flush chain ip {T} {rules.service_chain(k)}" in d
    assert f"add rule ip {T} {rules.endpoint_chain(k, Endpoint('10.0.1.3', None))} dnat to 10.0.1.3" in d
    gone = render_delta(new, LBState.build({WHOLE: [], WEB: [("10.0.1.2", 8080)]}), T)
    assert f"delete element ip {T} vip-ips {{ 10.96.0.20 }}" in gone
    assert f"add element ip {T} no-endpoint-vips {{ 10.96.0.20 : goto reject-chain }}" in gone


def test_local_port_keys_match_any_local_address() -> None:
    k = ServiceKey.local("TCP", 8080)
    assert k.is_local and not k.is_whole and k.proto == "tcp"
    st_ = LBState({k: (Endpoint("10.200.1.7", 80),), ServiceKey.local("udp", 53): ()})
    s = render_full(st_, T)
    chains, maps = model_of_full(s)
    assert maps["local-ports"] == {"tcp . 8080": f"goto {rules.service_chain(k)}"}
    assert maps["no-endpoint-local-ports"] == {"udp . 53": "goto reject-chain"}
    assert chain_body(s, rules.endpoint_chain(k, Endpoint("10.200.1.7", 80))) == [
        "meta l4proto tcp dnat to 10.200.1.7:80"]
    with pytest.raises(RulesError, match="local-port key needs a protocol and a port"):
        ServiceKey(rules.LOCAL, "any", None)


def test_whole_vip_endpoints_have_no_port_and_port_keys_need_one() -> None:
    with pytest.raises(RulesError, match="whole-VIP key takes endpoints with port None"):
        LBState.build({WHOLE: [("10.0.1.2", 80)]})
    with pytest.raises(RulesError, match="whole-VIP key takes endpoints with port None"):
        LBState.build({WEB: [("10.0.1.2", None)]})
    with pytest.raises(RulesError, match="port must be an integer"):
        ServiceKey("10.96.0.1", "tcp", None)
    with pytest.raises(RulesError, match="protocol must be one of"):
        ServiceKey("10.96.0.1", "any", 80)


# -- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize("vip", ["10.96.0", "fd00::1", "0.0.0.0", "127.0.0.1", "224.0.0.1",
                                 "255.255.255.255", "10.96.0.1/32", " 10.96.0.1"])
def test_bad_vip(vip: str) -> None:
    with pytest.raises(RulesError, match="VIP"):
        ServiceKey(vip, "tcp", 80)


@pytest.mark.parametrize("port", [0, 65536, -1, True, "80", 80.0])
def test_bad_ports(port: Any) -> None:
    with pytest.raises(RulesError, match="port must be an integer 1-65535"):
        ServiceKey("10.96.0.1", "tcp", port)
    with pytest.raises(RulesError, match="endpoint port"):
        Endpoint("10.0.1.2", port)


@pytest.mark.parametrize("proto", ["icmp", "", "tcp ", None, 6])
def test_bad_protocol(proto: Any) -> None:
    with pytest.raises(RulesError, match="protocol must be one of tcp, udp, sctp"):
        ServiceKey("10.96.0.1", proto, 80)


def test_bad_endpoints_and_keys() -> None:
    with pytest.raises(RulesError, match="endpoint address"):
        Endpoint("10.0.1.300", 80)
    with pytest.raises(RulesError, match=r"endpoint must be \(ip, port\)"):
        LBState.build({WEB: ["10.0.1.2:80"]})  # type: ignore[list-item]
    with pytest.raises(RulesError, match=r"service key must be \(vip, proto, port\)"):
        LBState.build({("10.96.0.1", "tcp"): []})  # type: ignore[dict-item]
    with pytest.raises(RulesError, match="given twice"):
        LBState.build({("10.96.0.1", "tcp", 80): [], ("10.96.0.1", "TCP", 80): []})
    with pytest.raises(RulesError, match="must be a ServiceKey"):
        LBState({WEB: ()})  # type: ignore[dict-item]
    with pytest.raises(RulesError, match="at most 4096"):
        LBState.build({WEB: [(f"10.1.{i // 250}.{i % 250 + 1}", 80) for i in range(4097)]})


@pytest.mark.parametrize("name", ["", "1abc", "a b", "a;b", "a" * 33, "tbl}", "-x", "ta\nble"])
def test_bad_table_names(name: str) -> None:
    with pytest.raises(RulesError, match="bad nftables table name"):
        render_full(LBState(), name)
    with pytest.raises(RulesError, match="bad nftables table name"):
        render_delta(LBState(), LBState(), name)


# -- the kernel's own check (root, nft installed): nft -c changes nothing -----------------------

needs_nft = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("nft") is None, reason="needs root and nft")


def nft_check(script: str) -> None:
    proc = subprocess.run(["nft", "-c", "-f", "-"], input=script, text=True, capture_output=True, timeout=30)
    assert proc.returncode == 0, f"{proc.stderr}\n{script}"


@needs_nft
def test_nft_accepts_full_and_delta() -> None:
    table = f"lbt-{os.urandom(3).hex()}"
    old = LBState.build({**{k: list(v) for k, v in {WEB: [("10.0.1.2", 8080), ("10.0.1.3", 8080)],
                                                     DNS: [("10.0.1.5", 53)], EMPTY: []}.items()},
                         ("10.96.0.13", "sctp", 9): [("10.0.1.7", 9)]})
    new = state()
    nft_check(render_full(old, table))
    nft_check(render_full(new, table))
    # the delta needs its old table: full(old) and the delta in one (discarded) transaction
    nft_check(render_full(old, table) + render_delta(old, new, table))
    nft_check(render_full(new, table) + render_delta(new, old, table))
    whole = LBState({**new.services, ServiceKey.whole("10.96.0.30"): (Endpoint("10.0.1.7", None),),
                     ServiceKey.whole("10.96.0.31"): (), ServiceKey.local("tcp", 8080): (Endpoint("10.0.1.8", 80),),
                     ServiceKey.local("udp", 8081): ()})
    nft_check(render_full(whole, table))
    nft_check(render_full(new, table) + render_delta(new, whole, table))
    nft_check(render_full(whole, table) + render_delta(whole, new, table))
    nft_check(rules.render_delete_table(table))


@needs_nft
def test_nft_rejects_a_broken_delta() -> None:
    table = f"lbt-{os.urandom(3).hex()}"
    proc = subprocess.run(["nft", "-c", "-f", "-"], input=render_full(state(), table) + render_delta(
        state(web=[]), state(), table), text=True, capture_output=True, timeout=30)
    assert proc.returncode != 0  # the delta from a state that is not the table's


# -- LoadBalancer with a fake nft --------------------------------------------------------------


class FakeKernel:
    def __init__(self) -> None:
        self.scripts: list[str] = []
        self.flushed: list[tuple[str, str | None, int | None]] = []
        self.fail_next = False
        self.conntrack_fails = False

    def nft(self, script: str, netns: Any = None) -> None:
        assert netns == "/run/x"
        if self.fail_next:
            self.fail_next = False
            raise NftError("nft -f failed (exit 1): Error: No such file or directory", 1, "Error", script)
        self.scripts.append(script)

    def conntrack(self, ip: str, vip: str | None = None, port: int | None = None, netns: Any = None) -> int:
        assert netns == "/run/x"
        if self.conntrack_fails:
            raise ConntrackError("conntrack -D failed (exit 2)")
        self.flushed.append((ip, vip, port))
        return 1


def test_loadbalancer_full_then_deltas_then_nothing() -> None:
    k = FakeKernel()
    lb = LoadBalancer(T, netns="/run/x", nft=k.nft, conntrack=k.conntrack)
    assert lb.applied is None
    assert lb.apply(state()) == render_full(state(), T)
    new = state(web=[("10.0.1.2", 8080)])
    assert lb.apply(new) == render_delta(state(), new, T)
    assert lb.apply(new) == ""
    assert len(k.scripts) == 2 and lb.applied == new
    assert k.flushed == []  # only tcp endpoints went


def test_loadbalancer_failure_makes_the_next_apply_full() -> None:
    k = FakeKernel()
    lb = LoadBalancer(T, netns="/run/x", nft=k.nft, conntrack=k.conntrack)
    lb.apply(state())
    k.fail_next = True
    with pytest.raises(NftError, match="No such file"):
        lb.apply(state(web=[]))
    assert lb.applied is None
    assert lb.apply(state(web=[])) == render_full(state(web=[]), T)
    assert lb.resync() == render_full(state(web=[]), T)


def test_loadbalancer_flushes_udp_conntrack_of_removed_endpoints() -> None:
    k = FakeKernel()
    lb = LoadBalancer(T, netns="/run/x", nft=k.nft, conntrack=k.conntrack)
    lb.apply(state())
    lb.apply(state(dns=[("10.0.1.6", 53)]))
    assert k.flushed == [("10.0.1.5", "10.96.0.11", 53)]
    k.conntrack_fails = True
    with pytest.raises(ConntrackError):
        lb.apply(LBState())
    assert lb.applied == LBState()  # the rules went in; only the clean-up failed


def test_loadbalancer_remove_deletes_the_table() -> None:
    k = FakeKernel()
    lb = LoadBalancer(T, netns="/run/x", nft=k.nft, conntrack=k.conntrack)
    lb.apply(state())
    lb.remove()
    assert k.scripts[-1] == f"add table ip {T}\ndelete table ip {T}\n"
    assert lb.applied is None
    with pytest.raises(RulesError):
        LoadBalancer("bad name")
