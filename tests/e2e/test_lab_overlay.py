"""Overlay networks across lab hosts, the first slice of issue 9: a service attached to an overlay
network gets an address per task on it, and its tasks on different hosts reach each other by that
address over VXLAN (the worker's VXLAN driver, peers pushed by the dispatcher), and the embedded
resolver at 127.0.0.11 in each task answers ``tasks.api`` with the running tasks' addresses and
``api`` with the service's VIP, which balances over them; published ports answer on every node
through the routing mesh, host-mode ports only where a task runs.

Each request runs inside a task's own network namespace (``nsenter --net=/proc/PID/ns/net``): the
overlay is reachable only from containers attached to it, not from the hosts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any

from deploy.lab import lab
from tests.e2e.conftest import HEARTBEAT, Cluster, client, shoal, wait_until

_GET = "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode())"


def _in_task(pid: int, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in the network namespace of the task whose container's pid is ``pid``."""
    return subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "--", *argv],
                          capture_output=True, text=True, timeout=30)


def _get_from_task(pid: int, url: str) -> str:
    res = _in_task(pid, sys.executable, "-I", "-c", _GET, url)
    if res.returncode != 0:
        raise AssertionError(f"GET {url} from pid {pid}: {res.stderr.strip().splitlines()[-1:]}")
    return res.stdout.strip()


_RESOLVE = ("import sys, dns.resolver; r = dns.resolver.Resolver(configure=False); r.nameservers = ['127.0.0.11'];"
            " r.lifetime = 3; print(' '.join(sorted(a.address for a in r.resolve(sys.argv[1], 'A'))))")


def _resolve_in_task(pid: int, name: str) -> list[str]:
    """The A records the embedded resolver (127.0.0.11 in the task's namespace) gives for ``name``."""
    res = _in_task(pid, sys.executable, "-c", _RESOLVE, name)
    if res.returncode != 0:
        raise AssertionError(f"resolving {name} in pid {pid}: {res.stderr.strip().splitlines()[-1:]}")
    return res.stdout.split()


def _running_tasks(service: str, network: str) -> list[dict[str, Any]] | None:
    """The running tasks of ``service``, each ``{"node", "pid", "ip"}`` (its address on
    ``network``), or None until every one of them runs with an address there."""
    c = client("h1")
    svc = c.service(service)
    want = svc["Spec"]["Mode"]["Replicated"]["Replicas"]
    out = []
    for t in c.tasks({"service": [svc["ID"]], "desired-state": ["running"]}):
        if t["Status"]["State"] != "running":
            return None
        addrs = [a for att in t.get("NetworksAttachments") or []
                 if att["Network"]["Spec"]["Name"] == network for a in att.get("Addresses") or []]
        pid = (t["Status"].get("ContainerStatus") or {}).get("PID")
        if not addrs or not pid:
            return None
        out.append({"node": t["NodeID"], "pid": int(pid), "ip": addrs[0].split("/")[0], "id": t["ID"]})
    return out if len(out) == want else None


def _underlay_mtu(host: lab.HostState) -> int:
    """The MTU of the interface that carries ``host``'s lab address (its data path address)."""
    res = subprocess.run(["ip", "-n", host.netns, "-j", "addr", "show"], capture_output=True, text=True, check=True)
    for link in json.loads(res.stdout):
        if any(a.get("local") == host.ip for a in link.get("addr_info", [])):
            return int(link["mtu"])
    raise AssertionError(f"no interface of {host.name} holds {host.ip}")


def test_tasks_reach_each_other_by_ip_across_hosts(cluster: Cluster) -> None:
    r = shoal("h1", "network", "create", "-d", "overlay", "--subnet", "10.20.0.0/24", "backend")
    assert r.returncode == 0, r.stderr
    try:
        _tasks_reach_each_other(cluster)
    finally:  # whatever failed, the next tests start without these
        for s in ("api", "client"):
            shoal("h1", "service", "rm", s)
        wait_until(lambda: shoal("h1", "network", "rm", "backend").returncode == 0
                   or "not found" in shoal("h1", "network", "inspect", "backend").stderr, 60,
                   "backend to be removable")


def _tasks_reach_each_other(cluster: Cluster) -> None:
    assert "backend" in shoal("h1", "network", "ls").stdout
    r = shoal("h1", "service", "create", "--name", "api", "--replicas", "3", "--network", "backend",
              "--timeout", "180", lab.IMAGE, "httpd", "-f", "-p", "80", "-h", "/www", timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    tasks = wait_until(lambda: _running_tasks("api", "backend"), 90, "3 running api tasks with a backend address")
    assert len({t["node"] for t in tasks}) == 3, tasks  # one per host: every pair crosses the underlay
    assert len({t["ip"] for t in tasks}) == 3 and all(t["ip"].startswith("10.20.0.") for t in tasks), tasks

    # every task answers every other one, on another host, at its overlay address
    hostnames = {}
    for a in tasks:
        for b in tasks:
            if a is b:
                continue
            url = f"http://{b['ip']}/cgi-bin/whoami"
            answer = wait_until(lambda pid=a["pid"], url=url: _get_from_task(pid, url), 20,
                                f"task {a['id']} to reach {b['ip']} over the overlay")
            hostnames.setdefault(b["ip"], set()).add(answer)
    assert all(len(v) == 1 for v in hostnames.values()) and len({next(iter(v)) for v in hostnames.values()}) == 3

    # names: the embedded resolver in every task answers tasks.<service> with the running tasks'
    # addresses and the service's name with its VIP on the network, on every host
    ips = sorted(t["ip"] for t in tasks)
    vip = _vip("api", "backend")
    for t in tasks:
        assert wait_until(lambda pid=t["pid"]: _resolve_in_task(pid, "tasks.api") == ips or None, 10,
                          "tasks.api to list the 3 tasks")
        assert _resolve_in_task(t["pid"], "api") == [vip]

    # the overlay interface's MTU is the underlay's minus the 50 bytes of VXLAN
    expected = _underlay_mtu(cluster.state.host("h1")) - 50
    link = _in_task(tasks[0]["pid"], "ip", "-j", "link", "show")
    mtus = {x["ifname"]: x["mtu"] for x in json.loads(link.stdout)}
    assert mtus.get("eth1") == expected, mtus

    # the docker CLI attaches a service by the network's name too, and its task reaches the others
    docker = shutil.which("docker")
    if docker:
        env = dict(os.environ, DOCKER_HOST=f"unix://{lab.socket_path('h1')}")
        r = subprocess.run([docker, "service", "create", "--detach", "--name", "client", "--network", "backend",
                            lab.IMAGE, "sleep", "100000"], env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        (client_task,) = wait_until(lambda: _running_tasks("client", "backend"), 90, "the client task on backend")
        assert wait_until(lambda: _resolve_in_task(client_task["pid"], "tasks.api") == ips or None, 10,
                          "the client task to resolve tasks.api")
        for b in tasks:
            url = f"http://{b['ip']}/cgi-bin/whoami"
            wait_until(lambda url=url: _get_from_task(client_task["pid"], url), 20,
                       f"the docker-made client task to reach {b['ip']}")
        assert subprocess.run([docker, "service", "rm", "client"], env=env, capture_output=True,
                              timeout=60).returncode == 0

    # a network in use is not removed; once its service is gone it is
    r = shoal("h1", "network", "rm", "backend")
    assert r.returncode != 0 and "api" in (r.stderr + r.stdout), r
    assert shoal("h1", "service", "rm", "api").returncode == 0
    wait_until(lambda: shoal("h1", "network", "rm", "backend").returncode == 0, 60, "backend to be removable")
    assert "backend" not in shoal("h1", "network", "ls").stdout


# -- service VIPs, the routing mesh and host-mode ports (issue 9, second half) -------------------

def _in_container(pid: int, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (a busybox applet of the image) inside the container whose pid is ``pid``: its
    network and mount namespaces, so its own resolv.conf (the embedded DNS at 127.0.0.11) is used."""
    return subprocess.run(["nsenter", "-t", str(pid), "-n", "-m", "--", *argv],
                          capture_output=True, text=True, timeout=timeout)


def _wget(pid: int, url: str) -> str:
    # no -T: busybox 1.35's wget crashes on it; the subprocess timeout bounds the call
    res = _in_container(pid, "wget", "-qO-", url, timeout=10)
    if res.returncode != 0:
        raise AssertionError(f"wget {url} in pid {pid}: {res.stderr.strip()}")
    return res.stdout.strip()


def _from_host(host: str, url: str) -> str:
    """GET ``url`` from lab host ``host``'s own namespace (the underlay), with busybox wget."""
    res = subprocess.run(["nsenter", f"--net={lab.NETNS_DIR / ('shoal-' + host)}", "--", sys.executable, "-I",
                          "-c", _GET, url], capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        raise AssertionError(f"wget {url} from {host}: {res.stderr.strip()}")
    return res.stdout.strip()


def _vip(service: str, network: str) -> str:
    c = client("h1")
    svc = c.service(service)
    nets = {n["Id"]: n["Name"] for n in c.networks()}
    (vip,) = [v["Addr"] for v in svc["Endpoint"]["VirtualIPs"] if nets.get(v["NetworkID"]) == network]
    return str(vip).split("/")[0]


def _scale(service: str, replicas: int) -> None:
    r = shoal("h1", "service", "scale", f"{service}={replicas}", "--detach")
    assert r.returncode == 0, r.stdout + r.stderr


def test_service_vip_dns_and_load_balancing_follow_the_tasks(cluster: Cluster) -> None:
    assert shoal("h1", "network", "create", "-d", "overlay", "--attachable", "front").returncode == 0
    try:
        for name, argv in (("api", ["httpd", "-f", "-p", "80", "-h", "/www"]), ("client", ["sleep", "100000"])):
            r = shoal("h1", "service", "create", "--name", name, "--replicas", "3", "--network", "front",
                      "--detach", lab.IMAGE, *argv)
            assert r.returncode == 0, r.stdout + r.stderr
        api = wait_until(lambda: _running_tasks("api", "front"), 90, "3 running api tasks")
        clients = wait_until(lambda: _running_tasks("client", "front"), 90, "3 running client tasks")
        vip = _vip("api", "front")
        assert vip not in {t["ip"] for t in api}

        # from a client task on every host: `api` is the VIP, 30 calls reach all 3 tasks
        hostnames = {_wget(t["pid"], f"http://{t['ip']}/cgi-bin/whoami") for t in api}
        assert len(hostnames) == 3
        for c in clients:
            answer = wait_until(lambda pid=c["pid"]: _in_container(pid, "nslookup", "api").stdout, 10,
                                "nslookup api in a client")
            assert vip in answer, answer
            # the API reports the tasks running a moment before every node's push is applied: the
            # client's resolver lists them first (its VIP table comes from the same push), then 30
            # calls in a row must all answer and reach all 3 tasks
            api_ips = sorted(t["ip"] for t in api)
            wait_until(lambda pid=c["pid"], want=api_ips: _resolve_in_task(pid, "tasks.api") == want or None, 10,
                       f"tasks.api to list the 3 tasks on {c['node']}")
            wait_until(lambda pid=c["pid"]: {_wget(pid, "http://api/cgi-bin/whoami") for _ in range(30)}
                       == hostnames or None, 10, f"30 calls to the VIP from {c['node']} to reach all 3 tasks")

        # tasks.api follows scaling on every host's resolver
        for n in (5, 2):
            _scale("api", n)
            tasks = wait_until(lambda n=n: (lambda ts: ts if ts and len(ts) == n else None)(
                _running_tasks("api", "front")), 120, f"{n} running api tasks")
            ips = sorted(t["ip"] for t in tasks)
            for c in clients:
                wait_until(lambda pid=c["pid"], ips=ips: _resolve_in_task(pid, "tasks.api") == ips or None, 5,
                           f"tasks.api to list {n} addresses on {c['node']}")
                # and the VIP sends only to those tasks
                want = {_wget(c["pid"], f"http://{ip}/cgi-bin/whoami") for ip in ips}
                wait_until(lambda pid=c["pid"], want=want: {_wget(pid, f"http://{vip}/cgi-bin/whoami")
                                                            for _ in range(20)} <= want or None, 5,
                           "the VIP to send only to the running tasks")

        # endpoint mode dnsrr: the name answers the task addresses, no VIP
        r = shoal("h1", "service", "create", "--name", "rr", "--replicas", "2", "--network", "front",
                  "--endpoint-mode", "dnsrr", "--detach", lab.IMAGE, "httpd", "-f", "-p", "80", "-h", "/www")
        assert r.returncode == 0, r.stdout + r.stderr
        rr = wait_until(lambda: _running_tasks("rr", "front"), 90, "2 running rr tasks")
        assert not client("h1").service("rr")["Endpoint"].get("VirtualIPs")
        rr_ips = sorted(t["ip"] for t in rr)
        wait_until(lambda: _resolve_in_task(clients[0]["pid"], "rr") == rr_ips or None, 5, "rr to answer its tasks")
    finally:
        for s in ("api", "client", "rr"):
            shoal("h1", "service", "rm", s)
        wait_until(lambda: shoal("h1", "network", "rm", "front").returncode == 0, 60, "front to be removable")


_REMOTE_CGI = ("mkdir -p /tmp/w/cgi-bin && printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\n"
               "echo $REMOTE_ADDR\\n' > /tmp/w/cgi-bin/remote && chmod 755 /tmp/w/cgi-bin/remote && "
               "exec httpd -f -p 80 -h /tmp/w")


def test_published_ports_answer_on_every_node_and_host_mode_only_where_a_task_runs(cluster: Cluster) -> None:
    state = cluster.state
    ip = {h: state.host(h).ip for h in ("h1", "h2", "h3", "h4")}
    try:
        r = shoal("h1", "service", "create", "--name", "pub", "--replicas", "1", "--publish", "8080:80",
                  "--detach", lab.IMAGE, "sh", "-c", _REMOTE_CGI)
        assert r.returncode == 0, r.stdout + r.stderr
        r = shoal("h1", "service", "create", "--name", "hostp", "--replicas", "1", "--publish",
                  "mode=host,target=80,published=8081", "--detach", lab.IMAGE, "sh", "-c", _REMOTE_CGI)
        assert r.returncode == 0, r.stdout + r.stderr
        ls = shoal("h1", "service", "ls").stdout
        assert "*:8080->80/tcp" in ls and "*:8081->80/tcp" in ls, ls

        # the routing mesh: from h4 (outside the swarm), every node answers 8080
        for h in ("h1", "h2", "h3"):
            wait_until(lambda h=h: _from_host("h4", f"http://{ip[h]}:8080/cgi-bin/remote"), 30,
                       f"{h}:8080 to answer through the mesh")
        # host mode: only the node running the task answers, and the task sees h4's address
        c = client("h1")
        nodes = {n["ID"]: n["Status"]["Addr"] for n in c.nodes()}
        (task,) = wait_until(lambda: [t for t in c.tasks({"service": ["hostp"], "desired-state": ["running"]})
                                      if t["Status"]["State"] == "running"] or None, 90, "the hostp task")
        where = nodes[task["NodeID"]]
        remote = wait_until(lambda: _from_host("h4", f"http://{where}:8081/cgi-bin/remote"), 30, "the host-mode port")
        assert remote.removeprefix("[::ffff:").removesuffix("]") == ip["h4"]  # httpd listens dual-stack
        for h in ("h1", "h2", "h3"):
            if ip[h] != where:
                try:
                    answer = _from_host("h4", f"http://{ip[h]}:8081/cgi-bin/remote")
                except AssertionError:
                    continue
                raise AssertionError(f"{h} answered the host-mode port without a task: {answer!r}")
    finally:
        for s in ("pub", "hostp"):
            shoal("h1", "service", "rm", s)


# -- a node dies: names, VIPs and the mesh stop sending to its tasks (issue 9's proof) ----------

_CALLS = """
import json, sys, urllib.request
out = []
for _ in range(int(sys.argv[2])):
    try:
        out.append(urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[3])).read().decode().strip())
    except Exception as e:
        out.append("ERROR " + type(e).__name__)
print(json.dumps(out))
"""


def _ns(pid: int) -> str:
    return f"/proc/{pid}/ns/net"


def _calls(netns: str, url: str, n: int = 20, timeout: float = 0.5) -> list[str]:
    """``n`` GETs of ``url`` from network namespace ``netns`` (a path ``nsenter --net`` takes), one
    connection each, each bounded by ``timeout``: the answers' bodies, or ``"ERROR <type>"``."""
    res = subprocess.run(["nsenter", f"--net={netns}", "--", sys.executable, "-I", "-c", _CALLS, url, str(n),
                          str(timeout)], capture_output=True, text=True, timeout=n * timeout + 30)
    if res.returncode != 0:
        raise AssertionError(f"GET {url} ×{n} in {netns}: {res.stderr.strip()[-300:]}")
    return list(json.loads(res.stdout))


def _link(host: lab.HostState, updown: str) -> None:
    """Set the bridge end of ``host``'s underlay veth ``up`` or ``down`` (its cable)."""
    subprocess.run(["ip", "link", "set", f"shoal-lab-{host.name}", updown], check=True, timeout=10)


def test_a_dead_node_leaves_dns_vips_and_the_mesh_within_the_node_down_time(cluster: Cluster) -> None:
    """A worker (h3) dies: within the node-down time (3 missed heartbeats of 1 s, plus a margin for
    a loaded 2-core box) the clients on h1 and h2 no longer resolve ``tasks.api`` to h3's task, the
    VIP of ``api`` answers 20 calls of 20 only from tasks on other nodes, and the routing mesh port
    on h1 and h2 answers h4 20 times of 20 with no errors.

    What models "the node died": first h3's cable is pulled (the bridge end of its underlay veth set
    down, so nothing of h3 reaches anyone any more and nobody reaches it, and no FIN or RST of its
    connections leaves it), then its shoald is killed with SIGKILL. Its containers keep running
    behind the cut, as the processes of a machine that lost power would never answer again: a
    request still sent to one of them times out (an error here), which is what the old VIP and
    mesh rules would cause. Afterwards the cable is plugged back and h3's shoald restarted (it
    shuts its replaced tasks down), also when the test fails, so the module's teardown finds a
    whole lab to take down."""
    st = lab.LabState.load()
    assert st
    h3 = st.host("h3")
    c = client("h1")
    node_name = {n["ID"]: n["Description"]["Hostname"] for n in c.nodes()}
    killed = False
    try:
        assert shoal("h1", "network", "create", "-d", "overlay", "--subnet", "10.21.0.0/24", "nd").returncode == 0
        for name, argv, extra in (("api", ["httpd", "-f", "-p", "80", "-h", "/www"], ["--network", "nd"]),
                                  ("client", ["sleep", "100000"], ["--network", "nd"]),
                                  ("pub", ["httpd", "-f", "-p", "80", "-h", "/www"], ["--publish", "8080:80"])):
            r = shoal("h1", "service", "create", "--name", name, "--replicas", "3", *extra, "--detach",
                      lab.IMAGE, *argv)
            assert r.returncode == 0, r.stdout + r.stderr
        api = wait_until(lambda: _running_tasks("api", "nd"), 90, "3 running api tasks")
        clients = wait_until(lambda: _running_tasks("client", "nd"), 90, "3 running client tasks")
        pub = wait_until(lambda: _running_tasks("pub", "ingress"), 90, "3 running pub tasks")
        for tasks in (api, clients, pub):  # one per node (spread), so h3 holds one of each
            assert sorted(node_name[t["node"]] for t in tasks) == ["h1", "h2", "h3"], tasks
        vip = _vip("api", "nd")
        dead_ips = {t["ip"] for t in api if node_name[t["node"]] == "h3"}
        # the hostnames (whoami's answer) of h3's api and pub tasks: their containers' own
        dead_names = {_in_container(t["pid"], "cat", "/etc/hostname").stdout.strip()
                      for t in api + pub if node_name[t["node"]] == "h3"}
        assert len(dead_names) == 2 and "" not in dead_names
        watchers = [(node_name[t["node"]], t["pid"]) for t in clients if node_name[t["node"]] in ("h1", "h2")]
        h4_ns = str(lab.NETNS_DIR / st.host("h4").netns)
        mesh_urls = [f"http://{st.host(h).ip}:8080/cgi-bin/whoami" for h in ("h1", "h2")]

        # before: every path reaches h3's tasks too (so the checks below can tell a change)
        for where, pid in watchers:
            assert dead_ips <= set(wait_until(lambda pid=pid: _resolve_in_task(pid, "tasks.api"), 10, "tasks.api"))
            wait_until(lambda pid=pid: set(_calls(_ns(pid), f"http://{vip}/cgi-bin/whoami", 30)) & dead_names, 20,
                       f"the VIP to reach h3's api task from {where}")
        for url in mesh_urls:
            wait_until(lambda url=url: set(_calls(h4_ns, url, 30)) & dead_names, 20,
                       f"{url} to reach h3's pub task from h4")

        t0 = time.monotonic()
        _link(h3, "down")
        killed = True
        lab.kill_daemon(st, h3)
        deadline = 3 * HEARTBEAT * 1.1 + 20  # node-down time (3 beats, +10 % jitter) + margin for a loaded box
        took: dict[str, float] = {}

        def left() -> float:
            return max(1.0, deadline - (time.monotonic() - t0))

        def clean(answers: list[str]) -> bool:  # every call answered, none by a task on h3
            return not any(a.startswith("ERROR") or a in dead_names for a in answers)

        for where, pid in watchers:
            wait_until(lambda pid=pid: (lambda ips: ips and not set(ips) & dead_ips)(_resolve_in_task(pid, "tasks.api")),
                       left(), f"tasks.api on {where} to drop h3's task {sorted(dead_ips)}")
            took[f"dns_{where}"] = time.monotonic() - t0
            url = f"http://{vip}/cgi-bin/whoami"
            wait_until(lambda pid=pid, url=url: clean(_calls(_ns(pid), url)), left(), f"20 calls of the VIP from {where} to answer only from tasks off h3")
            took[f"vip_{where}"] = time.monotonic() - t0
        for h, url in zip(("h1", "h2"), mesh_urls, strict=True):
            wait_until(lambda url=url: clean(_calls(h4_ns, url)), left(), f"20 calls of {url} from h4 to answer with no errors")
            took[f"mesh_{h}"] = time.monotonic() - t0
        print("FIGURE node_down_to_clean_s " + " ".join(f"{k}={v:.2f}" for k, v in sorted(took.items())))
        assert max(took.values()) <= deadline, took
        h3_id = next(i for i, n in node_name.items() if n == "h3")
        assert c.node(h3_id)["Status"]["State"] == "down"
    finally:
        if killed:
            _link(h3, "up")
            lab.start_daemon(st, h3)
            wait_until(lambda: any(n["Description"]["Hostname"] == "h3" and n["Status"]["State"] == "ready"
                                   for n in client("h1").nodes()), 60, "h3 to be Ready again")
        for s in ("api", "client", "pub"):
            shoal("h1", "service", "rm", s)
        wait_until(lambda: shoal("h1", "network", "rm", "nd").returncode == 0
                   or "not found" in shoal("h1", "network", "inspect", "nd").stderr, 60, "nd to be removable")

