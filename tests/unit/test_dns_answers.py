"""Tests of overlaynet.dns.records and overlaynet.dns.answers: what the embedded DNS answers from
its table (pure: no sockets)."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest

from overlaynet.dns.answers import DEFAULT_TTL, FORWARD, answer, lookup_name, ptr_address
from overlaynet.dns.records import DnsTable, NetworkRecords, ServiceRecord, TaskRecord

TASK_A = "a" * 25
TASK_B = "b" * 25
TASK_C = "c" * 25


def front_net() -> NetworkRecords:
    """n1: `web` (VIP 10.0.1.2, alias `www`, tasks A and B, B unhealthy), `db` (dnsrr, task C),
    `idle` (VIP, no task)."""
    return NetworkRecords(
        "n1",
        services=(ServiceRecord("web", "10.0.1.2", aliases=("www",)),
                  ServiceRecord("db", None),
                  ServiceRecord("idle", "10.0.1.9")),
        tasks=(TaskRecord("web", 1, TASK_A, "10.0.1.3", hostname="web-host", aliases=("cache",)),
               TaskRecord("web", 2, TASK_B, "10.0.1.4", hostname="web-host", serving=False),
               TaskRecord("db", 1, TASK_C, "10.0.1.5")))


def back_net() -> NetworkRecords:
    """n2: `api` (VIP 10.0.2.2, one task on node `node9`, a global service) and another `web`
    with VIP 10.0.2.7."""
    return NetworkRecords(
        "n2",
        services=(ServiceRecord("api", "10.0.2.2"), ServiceRecord("web", "10.0.2.7")),
        tasks=(TaskRecord("api", "node9", "d" * 25, "10.0.2.3", hostname="api-host"),))


@pytest.fixture
def table() -> DnsTable:
    t = DnsTable()
    t.replace(front_net())
    t.replace(back_net())
    return t


def ask(table: DnsTable, name: str, networks: object = frozenset({"n1"}), rdtype: str = "A",
        **kw: object) -> dns.message.Message:
    reply = answer(dns.message.make_query(name, rdtype), networks, table, **kw)  # type: ignore[arg-type]
    assert isinstance(reply, dns.message.Message), f"{name} {rdtype} was forwarded"
    return reply


def ips(reply: dns.message.Message) -> set[str]:
    assert reply.rcode() == dns.rcode.NOERROR
    return {rd.to_text() for rrset in reply.answer for rd in rrset}


def test_service_name_answers_the_vip(table: DnsTable) -> None:
    reply = ask(table, "web")
    assert ips(reply) == {"10.0.1.2"}
    rrset = reply.answer[0]
    assert rrset.rdtype == dns.rdatatype.A and rrset.ttl == DEFAULT_TTL
    assert reply.flags & dns.flags.RA and reply.flags & dns.flags.QR


def test_service_alias_answers_the_vip(table: DnsTable) -> None:
    assert ips(ask(table, "www")) == {"10.0.1.2"}


def test_tasks_prefix_answers_the_serving_task_ips(table: DnsTable) -> None:
    assert ips(ask(table, "tasks.web")) == {"10.0.1.3"}  # B is not serving (unhealthy)
    assert ips(ask(table, "tasks.www")) == {"10.0.1.3"}  # the alias too
    assert ips(ask(table, "tasks.db")) == {"10.0.1.5"}


def test_dnsrr_service_answers_its_task_ips(table: DnsTable) -> None:
    t = DnsTable()
    t.replace(NetworkRecords("n1", services=(ServiceRecord("rr", None),), tasks=tuple(
        TaskRecord("rr", i, f"{i:025d}", f"10.0.1.{10 + i}") for i in range(1, 4))))
    assert ips(ask(t, "rr")) == {"10.0.1.11", "10.0.1.12", "10.0.1.13"}
    assert ips(ask(table, "db")) == {"10.0.1.5"}


def test_slot_and_task_id_answer_that_task(table: DnsTable) -> None:
    assert ips(ask(table, f"web.1.{TASK_A}")) == {"10.0.1.3"}
    assert ips(ask(table, f"web.2.{TASK_B}")) == {"10.0.1.4"}  # its own name still answers
    assert ips(ask(table, f"api.node9.{'d' * 25}", {"n2"})) == {"10.0.2.3"}  # global: node ID
    assert answer(dns.message.make_query(f"web.2.{TASK_A}", "A"), {"n1"}, table) is FORWARD


def test_hostnames_and_task_aliases_answer_their_tasks(table: DnsTable) -> None:
    assert ips(ask(table, "web-host")) == {"10.0.1.3", "10.0.1.4"}  # two tasks share it
    assert ips(ask(table, "cache")) == {"10.0.1.3"}
    assert ips(ask(table, "api-host", {"n2"})) == {"10.0.2.3"}


def test_names_are_case_insensitive_with_or_without_trailing_dot(table: DnsTable) -> None:
    for name in ("WEB", "Web.", "web.", "TASKS.Web", f"WEB.1.{TASK_A.upper()}"):
        assert ips(ask(table, name)) in ({"10.0.1.2"}, {"10.0.1.3"}), name
    reply = ask(table, "WeB")
    assert reply.answer[0].name.to_text() == "WeB."  # the owner name echoes the question


def test_search_domain_is_stripped(table: DnsTable) -> None:
    assert ips(ask(table, "web.corp.example", search_domains=("corp.example",))) == {"10.0.1.2"}
    assert ips(ask(table, "tasks.WEB.Corp.Example.", search_domains=("other", "corp.example."))) == {"10.0.1.3"}
    q = dns.message.make_query("web.corp.example", "A")
    assert answer(q, {"n1"}, table) is FORWARD  # no search domain given
    assert answer(q, {"n1"}, table, search_domains=("example.org",)) is FORWARD
    assert lookup_name("corp.example", {"n1"}, table, ("corp.example",)) is None


def test_aaaa_and_other_types_of_a_known_name_are_empty_not_forwarded(table: DnsTable) -> None:
    for rdtype in ("AAAA", "MX", "TXT", "SRV"):
        for name in ("web", "tasks.web", f"web.1.{TASK_A}", "web-host"):
            reply = ask(table, name, rdtype=rdtype)
            assert reply.rcode() == dns.rcode.NOERROR and reply.answer == [], (name, rdtype)


def test_any_of_a_known_name_gives_its_a_records(table: DnsTable) -> None:
    assert ips(ask(table, "web", rdtype="ANY")) == {"10.0.1.2"}


def test_unknown_names_are_forwarded(table: DnsTable) -> None:
    for name, rdtype in (("example.com", "A"), ("example.com", "AAAA"), ("tasks.nothing", "A"),
                         ("web.example.com", "A"), (".", "NS"), ("99.1.0.10.in-addr.arpa", "PTR")):
        assert answer(dns.message.make_query(name, rdtype), {"n1"}, table) is FORWARD, name


def test_names_are_scoped_to_the_clients_networks(table: DnsTable) -> None:
    q = dns.message.make_query("api", "A")
    assert answer(q, {"n1"}, table) is FORWARD  # api is on n2 only
    assert answer(q, set(), table) is FORWARD
    assert answer(q, {"n9"}, table) is FORWARD  # a network the table does not hold
    assert ips(ask(table, "api", {"n1", "n2"})) == {"10.0.2.2"}
    assert ips(ask(table, "tasks.api", ("n2",))) == {"10.0.2.3"}


def test_a_name_on_two_networks_answers_from_one_deterministically(table: DnsTable) -> None:
    assert ips(ask(table, "web", {"n2", "n1"})) == {"10.0.1.2"}  # a set: sorted, n1 first
    assert ips(ask(table, "web", frozenset({"n1", "n2"}))) == {"10.0.1.2"}
    assert ips(ask(table, "web", ("n2", "n1"))) == {"10.0.2.7"}  # a sequence: its order


def test_a_known_name_without_address_is_answered_empty(table: DnsTable) -> None:
    for name in ("tasks.idle",):
        reply = ask(table, name)
        assert reply.rcode() == dns.rcode.NOERROR and reply.answer == []
    assert ips(ask(table, "idle")) == {"10.0.1.9"}
    t = DnsTable()
    t.replace(NetworkRecords("n1", services=(ServiceRecord("rr", None),)))
    assert ask(t, "rr").answer == [] and ask(t, "tasks.rr").answer == []


def test_service_names_win_over_task_names_and_hostnames() -> None:
    t = DnsTable()
    t.replace(NetworkRecords("n1", services=(ServiceRecord("web", "10.0.1.2"),), tasks=(
        TaskRecord("web", 1, TASK_A, "10.0.1.3", hostname="web", aliases=("tasks.web",)),)))
    assert ips(ask(t, "web")) == {"10.0.1.2"}
    assert ips(ask(t, "tasks.web")) == {"10.0.1.3"}


def test_replace_swaps_one_network_whole(table: DnsTable) -> None:
    table.replace(NetworkRecords("n1", services=(ServiceRecord("web", "10.0.1.2"),), tasks=(
        TaskRecord("web", 3, TASK_C, "10.0.1.6"),)))
    assert ips(ask(table, "tasks.web")) == {"10.0.1.6"}  # A (stopped) left, C arrived
    assert answer(dns.message.make_query(f"web.1.{TASK_A}", "A"), {"n1"}, table) is FORWARD
    assert answer(dns.message.make_query("db", "A"), {"n1"}, table) is FORWARD  # db removed
    assert ips(ask(table, "api", {"n2"})) == {"10.0.2.2"}  # n2 untouched


def test_bad_records_raise_and_leave_the_table_unchanged(table: DnsTable) -> None:
    before = table.records("n1")
    with pytest.raises(ValueError, match="not an IPv4 address"):
        table.replace(NetworkRecords("n1", services=(ServiceRecord("web", "10.0.1.2"),), tasks=(
            TaskRecord("web", 1, TASK_A, "fd00::1"),)))
    with pytest.raises(ValueError):
        table.replace_all([NetworkRecords("n3", services=(ServiceRecord("x", "300.1.1.1"),))])
    assert table.records("n1") is before
    assert table.network_ids() == {"n1", "n2"}
    assert ips(ask(table, "tasks.web")) == {"10.0.1.3"}


def test_replace_all_and_remove(table: DnsTable) -> None:
    table.replace_all([back_net()])
    assert table.network_ids() == {"n2"}
    assert answer(dns.message.make_query("web", "A"), {"n1"}, table) is FORWARD
    table.remove("n2")
    table.remove("n2")  # twice is fine
    assert table.network_ids() == frozenset()
    assert table.records("n2") is None


def test_reply_copies_id_and_question(table: DnsTable) -> None:
    q = dns.message.make_query("web", "A")
    reply = ask(table, "web")
    reply2 = answer(q, {"n1"}, table)
    assert isinstance(reply2, dns.message.Message)
    assert reply2.id == q.id and reply2.question == q.question
    assert reply.answer[0].rdclass == dns.rdataclass.IN


def test_malformed_or_unsupported_queries(table: DnsTable) -> None:
    q = dns.message.make_query("web", "A")
    q.question.append(q.question[0])  # two questions
    reply = answer(q, {"n1"}, table)
    assert isinstance(reply, dns.message.Message) and reply.rcode() == dns.rcode.FORMERR
    q = dns.message.make_query("web", "A")
    q.question = []
    reply = answer(q, {"n1"}, table)
    assert isinstance(reply, dns.message.Message) and reply.rcode() == dns.rcode.FORMERR
    q = dns.message.make_query("web", "A")
    q.set_opcode(dns.opcode.NOTIFY)
    reply = answer(q, {"n1"}, table)
    assert isinstance(reply, dns.message.Message) and reply.rcode() == dns.rcode.NOTIMP
    q = dns.message.make_query("web", "TXT", rdclass="CH")
    assert answer(q, {"n1"}, table) is FORWARD


# -- PTR (libnetwork network.go ResolveIP, resolver.go handlePTRQuery) --------------------------------


def named(table: DnsTable) -> DnsTable:
    t = DnsTable()
    t.replace(NetworkRecords("n1", front_net().services, front_net().tasks, name="front"))
    t.replace(NetworkRecords("n2", back_net().services, back_net().tasks, name="backend"))
    return t


def ptr_of(reply: dns.message.Message) -> list[str]:
    assert reply.rcode() == dns.rcode.NOERROR
    return [rd.to_text() for rrset in reply.answer for rd in rrset if rrset.rdtype == dns.rdatatype.PTR]


def test_ptr_of_a_task_ip_is_its_container_name_on_the_network(table: DnsTable) -> None:
    t = named(table)
    reply = ask(t, "3.1.0.10.in-addr.arpa.", rdtype="PTR")
    assert ptr_of(reply) == [f"web.1.{TASK_A}.front."]
    assert reply.answer[0].ttl == DEFAULT_TTL and reply.answer[0].name.to_text() == "3.1.0.10.in-addr.arpa."
    # a global service's slot is the node ID; any case, no trailing dot
    assert ptr_of(ask(t, "3.2.0.10.IN-ADDR.ARPA", networks=["n2"], rdtype="PTR")) == [f"api.node9.{'d' * 25}.backend."]
    # an unhealthy task keeps its own names, the reverse one too
    assert ptr_of(ask(t, "4.1.0.10.in-addr.arpa", rdtype="PTR")) == [f"web.2.{TASK_B}.front."]
    # the first of the client's networks that has the address answers
    assert ptr_of(ask(t, "3.1.0.10.in-addr.arpa", networks=["n2", "n1"], rdtype="PTR")) == [f"web.1.{TASK_A}.front."]


def test_a_network_without_a_name_answers_with_its_id(table: DnsTable) -> None:
    assert ptr_of(ask(table, "5.1.0.10.in-addr.arpa", rdtype="PTR")) == [f"db.1.{TASK_C}.n1."]


@pytest.mark.parametrize("name", [
    "2.1.0.10.in-addr.arpa",        # the VIP of web: libnetwork keeps no reverse entry for VIPs
    "3.2.0.10.in-addr.arpa",        # a task of n2, asked from n1 only
    "99.1.0.10.in-addr.arpa",       # nobody's
    "1.0.10.in-addr.arpa",          # a zone, not an address
    "03.1.0.10.in-addr.arpa",       # leading zero
    "3.1.0.300.in-addr.arpa",       # not an octet
    "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa",  # IPv6: forwarded
    "example.com",                  # PTR of an unknown forward name
])
def test_other_ptr_queries_are_forwarded_as_docker_does(table: DnsTable, name: str) -> None:
    t = named(table)
    assert answer(dns.message.make_query(name, "PTR"), frozenset({"n1"}), t) is FORWARD


def test_ptr_of_a_known_forward_name_is_empty_not_forwarded(table: DnsTable) -> None:
    assert ask(named(table), "web", rdtype="PTR").answer == []


def test_a_and_other_types_of_a_reverse_name_are_not_ptr_answers(table: DnsTable) -> None:
    t = named(table)
    assert answer(dns.message.make_query("3.1.0.10.in-addr.arpa", "A"), frozenset({"n1"}), t) is FORWARD


def test_ptr_address_reads_reverse_names() -> None:
    assert ptr_address("7.0.1.10.in-addr.arpa.") == "10.1.0.7"
    assert ptr_address("in-addr.arpa") is None and ptr_address("a.b.c.d.in-addr.arpa") is None
