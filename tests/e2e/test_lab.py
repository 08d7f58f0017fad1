"""End to end on the lab (root): the demo path, the docker CLI, bad input, drain, manager restart
and worker loss. Tests run in file order on one session cluster and put it back as they found it
(3 running ``web`` tasks, all nodes active and up)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Any

import pytest

from deploy.lab import lab
from deploy.lab.demo import whoami_all
from shoal.cli.client import APIError
from tests.e2e.conftest import Cluster, client, shoal, wait_until

pytestmark = [pytest.mark.root, pytest.mark.e2e]


def hostnames() -> dict[str, str]:
    return {n["ID"]: n["Description"]["Hostname"] for n in client("h1").nodes()}


def running(service: str) -> list[dict[str, Any]]:
    """Running tasks (desired running) of ``service`` on nodes that are not down."""
    c = client("h1")
    down = {n["ID"] for n in c.nodes() if n["Status"]["State"] == "down"}
    sid = c.service(service)["ID"]
    return [t for t in c.tasks({"service": [sid]})
            if t["DesiredState"] == "running" and t["Status"]["State"] == "running" and t["NodeID"] not in down]


def nodes_of(tasks: list[dict[str, Any]]) -> list[str]:
    names = hostnames()
    return sorted(names.get(t["NodeID"], "?") for t in tasks)


def test_demo_path_three_tasks_one_per_host_three_hostnames(cluster: Cluster) -> None:
    tasks = running("web")
    assert len(tasks) == 3
    assert nodes_of(tasks) == ["h1", "h2", "h3"]  # spread: one per host
    for t in tasks:
        cs = t["Status"]["ContainerStatus"]
        assert len(cs["ContainerID"]) == 64 and cs["PID"] > 0
        assert t["NetworksAttachments"][0]["Addresses"]
    answers = whoami_all(cluster.state)
    assert len(answers) == 3
    names = {a for _, _, a in answers}
    assert len(names) == 3, answers
    assert names == {t["Status"]["ContainerStatus"]["ContainerID"][:12] for t in tasks}
    r = shoal("h1", "service", "ps", "web")
    assert r.returncode == 0 and r.stdout.count("Running") >= 6, r.stdout  # desired + current
    r = shoal("h1", "node", "ls")
    assert r.returncode == 0 and all(h in r.stdout for h in ("h1", "h2", "h3")) and "Leader" in r.stdout


def docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DOCKER_HOST=f"unix://{lab.socket_path('h1')}")
    return subprocess.run(["docker", *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(shutil.which("docker") is None, reason="the docker CLI is not on PATH")
def test_docker_cli(cluster: Cluster) -> None:
    r = docker("info")
    assert r.returncode == 0, r.stderr
    assert "Swarm: active" in r.stdout
    r = docker("node", "ls")
    assert r.returncode == 0, r.stderr
    assert all(h in r.stdout for h in ("h1", "h2", "h3")) and "Leader" in r.stdout
    r = docker("service", "ls")
    assert r.returncode == 0, r.stderr
    web = [line for line in r.stdout.splitlines() if " web " in line]
    assert web and "3/3" in web[0], r.stdout
    r = docker("service", "ps", "web")
    assert r.returncode == 0 and r.stdout.count("Running") >= 6, r.stdout + r.stderr
    r = docker("service", "create", "--detach", "--replicas", "2", "--name", "w2", lab.IMAGE, "sleep", "1000")
    assert r.returncode == 0, r.stderr
    try:
        wait_until(lambda: len(running("w2")) == 2, 120, "w2 to have 2 running tasks")
        r = docker("service", "scale", "w2=4")  # the CLI's own convergence loop (verify waits 5 s)
        assert r.returncode == 0, r.stderr
        assert "verify: Service w2 converged" in r.stdout, r.stdout
        wait_until(lambda: len(running("w2")) == 4, 30, "w2 to have 4 running tasks")
    finally:
        r = docker("service", "rm", "w2")
    assert r.returncode == 0, r.stderr
    c = client("h1")
    wait_until(lambda: not [s for s in c.services() if s["Spec"]["Name"] == "w2"], 30, "w2 to be gone")
    wait_until(lambda: not [t for t in c.tasks() if t.get("ServiceID") and
                            t["Spec"]["ContainerSpec"].get("Args") == ["sleep", "1000"]], 60, "w2's tasks to be gone")


def _remove(name: str) -> None:
    try:
        client("h1").service_remove(name)
    except APIError:
        pass


def test_unknown_image_is_rejected_with_registry_error(cluster: Cluster) -> None:
    r = shoal("h1", "service", "create", "--detach", "--name", "bad", f"{lab.REGISTRY}/nope:latest")
    assert r.returncode == 0, r.stderr
    try:
        c = client("h1")
        sid = c.service("bad")["ID"]
        t = wait_until(lambda: [t for t in c.tasks({"service": [sid]}) if t["Status"]["State"] == "rejected"],
                       120, "a rejected task of `bad`")[0]
        err = t["Status"].get("Err", "")
        assert "nope" in err or "unknown" in err.lower() or "not found" in err.lower(), err
        r = shoal("h1", "service", "ls")
        assert " bad " in r.stdout
        assert len(running("web")) == 3  # others unaffected
    finally:
        _remove("bad")


def test_command_not_found_fails_with_exit_code(cluster: Cluster) -> None:
    r = shoal("h1", "service", "create", "--detach", "--name", "nocmd", "--restart-condition", "none",
              lab.IMAGE, "/no/such/command")
    assert r.returncode == 0, r.stderr
    try:
        c = client("h1")
        sid = c.service("nocmd")["ID"]
        t = wait_until(lambda: [t for t in c.tasks({"service": [sid]}) if t["Status"]["State"] == "failed"],
                       120, "a failed task of `nocmd`")[0]
        assert t["Status"]["ContainerStatus"]["ExitCode"] != 0
        assert t["Status"].get("Err") or t["Status"].get("Message")
    finally:
        _remove("nocmd")


def test_invalid_specs_are_refused_and_nothing_is_stored(cluster: Cluster) -> None:
    c = client("h1")
    before = sorted(s["ID"] for s in c.services())
    base = {"Name": "inv", "TaskTemplate": {"ContainerSpec": {"Image": lab.IMAGE}}, "Mode": {"Replicated": {"Replicas": 1}}}
    bad_specs = [
        dict(base, Mode={"Replicated": {"Replicas": -1}}),
        dict(base, TaskTemplate={"ContainerSpec": {"Image": ""}}),
        dict(base, Name="web"),  # duplicate
    ]
    for spec in bad_specs:
        with pytest.raises(APIError) as ei:
            c.service_create(spec)
        assert ei.value.status in (400, 409) and ei.value.message
    with pytest.raises(APIError) as ei:
        c.request("POST", "/services/create", body=b"{not json", headers={"Content-Type": "application/json"})
    assert ei.value.status == 400
    r = shoal("h1", "service", "create", "--detach", "--name", "web", lab.IMAGE)
    assert r.returncode == 1 and r.stderr.startswith("Error response from daemon: ")
    assert sorted(s["ID"] for s in c.services()) == before


def test_join_with_malformed_token_or_dead_address(cluster: Cluster) -> None:
    h1 = cluster.state.host("h1")
    nodes_before = len(client("h1").nodes())
    r = shoal("h4", "swarm", "join", "--token", "SWMTKN-1-bogus", f"{h1.ip}:2377", timeout=90)
    assert r.returncode == 1 and r.stderr.startswith("Error response from daemon: "), r.stderr
    assert "token" in r.stderr.lower()
    bad = cluster.worker_token[:-5] + "00000"  # well formed, wrong secret
    r = shoal("h4", "swarm", "join", "--token", bad, f"{h1.ip}:2377", timeout=90)
    assert r.returncode == 1 and "Error response from daemon" in r.stderr
    r = shoal("h4", "swarm", "join", "--token", cluster.worker_token, "10.99.0.99:2377", timeout=90)
    assert r.returncode == 1 and "Error response from daemon" in r.stderr
    assert len(client("h1").nodes()) == nodes_before
    assert client("h4").info()["Swarm"]["LocalNodeState"] == "inactive"


def test_drain_moves_tasks_away(cluster: Cluster) -> None:
    r = shoal("h1", "node", "update", "--availability", "drain", "h2")
    assert r.returncode == 0, r.stderr
    try:
        wait_until(lambda: len(t := running("web")) == 3 and "h2" not in nodes_of(t), 120,
                   "web to run 3 tasks, none on h2")
        assert "Drain" in shoal("h1", "node", "ls").stdout
    finally:
        r = shoal("h1", "node", "update", "--availability", "active", "h2")
    assert r.returncode == 0, r.stderr


def test_manager_restart_keeps_state_and_containers(cluster: Cluster) -> None:
    c = client("h1")
    before = {t["ID"]: t["Status"]["ContainerStatus"]["ContainerID"] for t in running("web")}
    pids = {t["ID"]: t["Status"]["ContainerStatus"]["PID"] for t in running("web")}
    services_before = sorted(s["ID"] for s in c.services())
    nodes_before = sorted(n["ID"] for n in c.nodes())
    st = lab.LabState.load()
    assert st
    h1 = st.host("h1")
    lab.kill_daemon(st, h1)  # kill -9
    for pid in pids.values():  # containers outlive the daemon (their shims hold them)
        os.kill(pid, 0)
    lab.start_daemon(st, h1)
    wait_until(lambda: sorted(n["ID"] for n in client("h1").nodes()) == nodes_before, 60, "the same nodes after restart")
    assert sorted(s["ID"] for s in client("h1").services()) == services_before
    def three() -> dict[str, str] | None:
        r = {t["ID"]: t["Status"]["ContainerStatus"]["ContainerID"] for t in running("web")}
        return r if len(r) == 3 else None

    after = wait_until(three, 60, "3 running web tasks after restart")
    assert after == before  # same tasks, same containers
    for pid in pids.values():
        os.kill(pid, 0)


def test_worker_loss_replaces_tasks(cluster: Cluster) -> None:
    st = lab.LabState.load()
    assert st
    h3 = st.host("h3")
    lab.kill_daemon(st, h3)
    try:
        h3_id = next(i for i, n in hostnames().items() if n == "h3")
        wait_until(lambda: client("h1").node(h3_id)["Status"]["State"] == "down", 30 * lab_hb(), "h3 to be Down")
        wait_until(lambda: len(t := running("web")) == 3 and set(nodes_of(t)) <= {"h1", "h2"}, 120,
                   "web to have 3 running tasks on h1 and h2")
        assert "Down" in shoal("h1", "node", "ls").stdout
    finally:
        lab.start_daemon(st, h3)
    wait_until(lambda: client("h1").node(h3_id)["Status"]["State"] == "ready", 60, "h3 to be Ready again")


def lab_hb() -> float:
    st = lab.LabState.load()
    return (st.heartbeat_period or 5.0) if st else 5.0


def test_cli_json_inspect(cluster: Cluster) -> None:
    r = shoal("h1", "service", "inspect", "web")
    assert r.returncode == 0
    assert json.loads(r.stdout)[0]["Spec"]["TaskTemplate"]["ContainerSpec"]["Args"] == ["httpd", "-f", "-p", "80", "-h", "/www"]


def _nft_tables(host: str) -> set[str]:
    res = subprocess.run(["nsenter", f"--net={lab.NETNS_DIR / ('shoal-' + host)}", "--", "nft", "-j", "list",
                          "tables"], capture_output=True, text=True, timeout=30, check=True)
    return {x["table"]["name"] for x in json.loads(res.stdout).get("nftables", []) if "table" in x}


def test_leave_removes_the_nodes_service_networking(cluster: Cluster) -> None:
    """``swarm leave`` on a worker running a task with an overlay network, an ingress-mode and a
    host-mode port: its container, overlay and ingress-sandbox namespaces and its nftables tables
    (the mesh's, the host ports') are gone; then h3 joins again (a new node) for the next tests."""
    st = lab.LabState.load()
    assert st
    h3_old = next(i for i, n in hostnames().items() if n == "h3")
    assert shoal("h1", "network", "create", "-d", "overlay", "leavenet").returncode == 0
    try:
        r = shoal("h1", "service", "create", "--name", "lv", "--replicas", "1", "--network", "leavenet",
                  "--constraint", "node.hostname==h3", "--publish", "8093:80",
                  "--publish", "mode=host,target=81,published=8094", "--detach",
                  lab.IMAGE, "httpd", "-f", "-p", "80", "-h", "/www")
        assert r.returncode == 0, r.stdout + r.stderr
        (task,) = wait_until(lambda: running("lv") or None, 90, "the lv task on h3")
        pid = int(task["Status"]["ContainerStatus"]["PID"])
        wait_until(lambda: {"shoal-mesh", "shoal-hostports"} <= _nft_tables("h3"), 30,
                   "h3's mesh and host-port tables")
        netns_dirs = [lab.RUN / "h3" / "ingress-netns", lab.RUN / "h3" / "overlay-netns"]
        assert any(d.exists() and any(d.iterdir()) for d in netns_dirs)

        r = shoal("h3", "swarm", "leave")
        assert r.returncode == 0, r.stdout + r.stderr

        def gone() -> bool:
            left = {"shoal-mesh", "shoal-hostports"} & _nft_tables("h3")
            files = [p for d in netns_dirs if d.exists() for p in d.iterdir()]
            return not left and not files and not os.path.exists(f"/proc/{pid}")
        wait_until(gone, 30, "h3's task, overlay and ingress namespaces and nftables tables to be gone")
    finally:
        shoal("h1", "service", "rm", "lv")
        wait_until(lambda: shoal("h1", "network", "rm", "leavenet").returncode == 0, 60, "leavenet to go")
        if shoal("h3", "swarm", "join", "--token", cluster.worker_token,
                 f"{st.host('h1').ip}:2377").returncode == 0:
            wait_until(lambda: client("h1").node(h3_old)["Status"]["State"] == "down", 30, "old h3 to be down")
            shoal("h1", "node", "rm", h3_old)
