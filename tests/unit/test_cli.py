"""Unit tests of the `shoal` CLI: flag parsing, spec building, tables, and its HTTP behaviour
against a small in-process Engine API endpoint on a unix socket (canned Docker API JSON)."""

from __future__ import annotations

import io
import json
import socketserver
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from shoal.cli import commands as cli
from shoal.cli import format as fmt
from shoal.cli.client import Client, ConnectError

Route = Callable[[str, str, bytes], tuple[int, Any]]


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[str, dict[Any, Any]]]:
    """A unix-socket HTTP endpoint; tests fill ``routes[(method, path)] = fn(query, body) -> (status, json)``."""
    routes: dict[Any, Any] = {"log": []}

    class H(BaseHTTPRequestHandler):
        def _do(self) -> None:
            path, _, query = self.path.partition("?")
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n) if n else b""
            routes["log"].append((self.command, path, query, body))
            fn = routes.get((self.command, path))
            status, obj = fn(query, body) if fn else (404, {"message": f"page not found: {path}"})
            raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        do_GET = do_POST = do_DELETE = _do

        def address_string(self) -> str:
            return "unix"

        def log_message(self, *args: Any) -> None:
            pass

    sock = tmp_path / "api.sock"
    srv = _Server(str(sock), H)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"unix://{sock}", routes
    finally:
        srv.shutdown()
        srv.server_close()


def run(host: str, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    rc = cli.main(["--host", host, *argv], out=out)
    return rc, out.getvalue()


NODE = {
    "ID": "n1aaaaaaaaaaaaaaaaaaaaaaa", "Version": {"Index": 7},
    "Spec": {"Role": "manager", "Availability": "active"},
    "Description": {"Hostname": "h1", "Engine": {"EngineVersion": "0.1.0"}},
    "Status": {"State": "ready", "Addr": "10.99.0.11"},
    "ManagerStatus": {"Leader": True, "Reachability": "reachable", "Addr": "10.99.0.11:2377"},
}
NODE2 = {"ID": "n2bbbbbbbbbbbbbbbbbbbbbbb", "Version": {"Index": 8}, "Spec": {"Role": "worker", "Availability": "drain"},
         "Description": {"Hostname": "h2", "Engine": {"EngineVersion": "0.1.0"}}, "Status": {"State": "down"}}


def test_create_flags_build_docker_shaped_spec() -> None:
    a = cli.build_parser().parse_args(
        "service create --name web --replicas 3 --limit-memory 64M --limit-cpu 0.5 -e A=1 "
        "--restart-condition on-failure --restart-delay 1s --stop-grace-period 2s --constraint node.hostname==h2 "
        "10.99.0.2:5000/busybox:latest httpd -f -p 80 -h /www".split())
    spec = cli.build_service_spec(a)
    c = spec["TaskTemplate"]["ContainerSpec"]
    assert c["Image"] == "10.99.0.2:5000/busybox:latest"
    assert c["Args"] == ["httpd", "-f", "-p", "80", "-h", "/www"] and "Command" not in c
    assert c["Env"] == ["A=1"] and c["StopGracePeriod"] == 2_000_000_000
    assert spec["TaskTemplate"]["Resources"]["Limits"] == {"MemoryBytes": 64 << 20, "NanoCPUs": 500_000_000}
    # as the docker CLI: a restart flag writes the whole policy (Swarm's defaults for the rest)
    assert spec["TaskTemplate"]["RestartPolicy"] == {"Condition": "on-failure", "Delay": 1_000_000_000,
                                                     "MaxAttempts": 0, "Window": 0}
    assert spec["TaskTemplate"]["Placement"] == {"Constraints": ["node.hostname==h2"]}
    assert spec["Mode"] == {"Replicated": {"Replicas": 3}}


@pytest.mark.parametrize("bad", ["--replicas -1 img", "--limit-memory lots img", "--restart-delay 5x img", "-e NOEQ img"])
def test_create_bad_flags_are_usage_errors(bad: str) -> None:
    a = cli.build_parser().parse_args(["service", "create", *bad.split()])
    with pytest.raises(cli.UsageError):
        cli.build_service_spec(a)


def test_units() -> None:
    assert fmt.parse_bytes("64M") == 67108864 and fmt.parse_bytes("1g") == 1 << 30 and fmt.parse_bytes("100") == 100
    assert fmt.parse_duration("1m30s") == 90_000_000_000 and fmt.parse_duration("250ms") == 250_000_000
    assert fmt.parse_cpus("1.5") == 1_500_000_000
    for fn, bad in ((fmt.parse_bytes, "x"), (fmt.parse_duration, "10"), (fmt.parse_cpus, "-1"),
                    (fmt.parse_cpus, "1e309"), (fmt.parse_cpus, "inf"), (fmt.parse_cpus, "nan")):
        with pytest.raises(ValueError):
            fn(bad)
    assert [fmt.human_duration(s) for s in (0.5, 1, 5, 61, 600, 3600, 7200)] == [
        "Less than a second", "1 second", "5 seconds", "About a minute", "10 minutes", "About an hour", "2 hours"]


def test_task_state_age_is_lowercase_as_docker() -> None:
    now = fmt.parse_time("2030-01-01T00:01:00Z")
    assert now is not None
    assert fmt.ago("2030-01-01T00:00:59.500Z", now) == "less than a second ago"
    assert fmt.ago("2030-01-01T00:00:00Z", now) == "about a minute ago"
    assert fmt.ago("2030-01-01T00:00:55Z", now) == "5 seconds ago"
    assert fmt.human_duration(0.2) == "Less than a second"  # image ls keeps go-units' capital


def test_table_is_tabwriter_like() -> None:
    out = fmt.table(["ID", "NAME"], [["abc", "web"], ["a", "longer-name"]])
    assert out.splitlines() == ["ID    NAME", "abc   web", "a     longer-name"]


def test_node_ls_marks_self_and_formats_states(api: tuple[str, dict[Any, Any]]) -> None:
    host, routes = api
    routes[("GET", "/nodes")] = lambda q, b: (200, [NODE2, NODE])
    routes[("GET", "/info")] = lambda q, b: (200, {"Swarm": {"NodeID": NODE["ID"], "LocalNodeState": "active"}})
    rc, out = run(host, "node", "ls")
    lines = out.splitlines()
    assert rc == 0
    assert lines[0].split() == ["ID", "HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER", "STATUS", "ENGINE", "VERSION"]
    assert lines[1].split() == [NODE["ID"], "*", "h1", "Ready", "Active", "Leader", "0.1.0"]
    assert lines[2].split() == [NODE2["ID"], "h2", "Down", "Drain", "0.1.0"]


def test_api_error_is_printed_like_docker(api: tuple[str, dict[Any, Any]], capsys: pytest.CaptureFixture[str]) -> None:
    host, routes = api
    routes[("POST", "/services/create")] = lambda q, b: (409, {"message": "rpc error: name conflicts with an existing object"})
    rc, _ = run(host, "service", "create", "--detach", "--name", "web", "busybox")
    assert rc == 1
    assert "Error response from daemon: rpc error: name conflicts with an existing object" in capsys.readouterr().err
    method, path, _, body = routes["log"][-1]
    assert (method, path) == ("POST", "/services/create") and json.loads(body)["Name"] == "web"


def test_connect_error_names_the_socket(tmp_path: Path) -> None:
    with pytest.raises(ConnectError, match="nothing.sock"):
        Client(f"unix://{tmp_path}/nothing.sock").ping()
    with pytest.raises(ValueError):
        Client("http://x")


def _task(slot: int, state: str, err: str = "", node: str = str(NODE["ID"]), ts: str = "2026-01-01T00:00:00.000000000Z") -> dict[str, Any]:
    return {"ID": f"t{slot}{state}".ljust(25, "x"), "ServiceID": "s1" + "y" * 23, "Slot": slot, "NodeID": node,
            "DesiredState": "running", "CreatedAt": ts,
            "Spec": {"ContainerSpec": {"Image": "busybox:latest@sha256:abc"}},
            "Status": {"State": state, "Timestamp": ts, "Err": err, "Message": state}}


def _service(replicas: int, monitor_ns: int = 300_000_000) -> dict[str, Any]:
    return {"ID": "s1" + "y" * 23, "Version": {"Index": 3},
            "Spec": {"Name": "web", "Mode": {"Replicated": {"Replicas": replicas}},
                     "UpdateConfig": {"Monitor": monitor_ns},
                     "TaskTemplate": {"ContainerSpec": {"Image": "busybox:latest@sha256:abc"}}}}


def test_create_waits_until_converged(api: tuple[str, dict[Any, Any]]) -> None:
    host, routes = api
    polls = {"n": 0}

    def tasks(q: str, b: bytes) -> tuple[int, Any]:
        polls["n"] += 1
        state = "preparing" if polls["n"] < 3 else "running"
        return 200, [_task(1, state), _task(2, state)]

    routes[("POST", "/services/create")] = lambda q, b: (201, {"ID": "s1" + "y" * 23})
    routes[("GET", "/services/s1" + "y" * 23)] = lambda q, b: (200, _service(2))
    routes[("GET", "/tasks")] = tasks
    routes[("GET", "/nodes")] = lambda q, b: (200, [NODE])
    rc, out = run(host, "service", "create", "--name", "web", "--replicas", "2", "busybox")
    assert rc == 0, out
    assert "1/2: preparing" in out and "2/2: running (on h1)" in out
    assert "verify: Waiting 1 seconds to verify that tasks are stable..." in out
    assert out.rstrip().endswith("verify: Service web converged")


def test_create_errors_when_the_service_is_removed_while_waiting(
        api: tuple[str, dict[Any, Any]], capsys: pytest.CaptureFixture[str]) -> None:
    """As the docker CLI: converged tasks are watched for UpdateConfig.Monitor; a service removed
    meanwhile is `service web not found`, exit 1, and never "converged"."""
    host, routes = api
    polls = {"n": 0}
    sid = "s1" + "y" * 23

    def service(q: str, b: bytes) -> tuple[int, Any]:
        polls["n"] += 1
        if polls["n"] > 3:
            return 404, {"message": f"service {sid} not found"}
        return 200, _service(2, monitor_ns=5_000_000_000)

    routes[("POST", "/services/create")] = lambda q, b: (201, {"ID": sid})
    routes[("GET", f"/services/{sid}")] = service
    routes[("GET", "/tasks")] = lambda q, b: (200, [_task(1, "running"), _task(2, "running")])
    routes[("GET", "/nodes")] = lambda q, b: (200, [NODE])
    rc, out = run(host, "service", "create", "--name", "web", "--replicas", "2", "busybox")
    assert rc == 1, out
    assert "converged" not in out
    assert "Error response from daemon: service web not found" in capsys.readouterr().err


def test_create_fails_clearly_when_tasks_are_rejected(api: tuple[str, dict[Any, Any]]) -> None:
    host, routes = api
    now = fmt.parse_time("2030-01-01T00:00:00Z")
    assert now
    rejected = [_task(1, "rejected", "pull 10.99.0.2:5000/nope: manifest unknown", ts=f"2099-01-01T00:00:0{i}.000000000Z")
                for i in range(3)]
    for i, t in enumerate(rejected):
        t["ID"] = f"r{i}".ljust(25, "x")
        t["DesiredState"] = "shutdown"
    routes[("POST", "/services/create")] = lambda q, b: (201, {"ID": "s1" + "y" * 23})
    routes[("GET", "/services/s1" + "y" * 23)] = lambda q, b: (200, _service(1))
    routes[("GET", "/tasks")] = lambda q, b: (200, rejected)
    routes[("GET", "/nodes")] = lambda q, b: (200, [NODE])
    rc, out = run(host, "service", "create", "--name", "web", "--timeout", "10", "10.99.0.2:5000/nope")
    assert rc == 1
    assert "rejected: pull 10.99.0.2:5000/nope: manifest unknown" in out
    assert "did not converge" in out


def test_service_ps_and_ls_tables(api: tuple[str, dict[Any, Any]]) -> None:
    host, routes = api
    svc = _service(2)
    routes[("GET", "/services/web")] = lambda q, b: (200, svc)
    routes[("GET", "/services")] = lambda q, b: (200, [dict(svc, ServiceStatus={"RunningTasks": 1, "DesiredTasks": 2})])
    old = _task(1, "failed", "task: non-zero exit (127)", ts="2026-01-01T00:00:00.000000000Z")
    old["ID"], old["DesiredState"], old["NodeID"] = "old".ljust(25, "x"), "shutdown", "gonenode1234"
    routes[("GET", "/tasks")] = lambda q, b: (200, [_task(1, "running", ts=_recent()), old])
    routes[("GET", "/nodes")] = lambda q, b: (200, [NODE])
    rc, out = run(host, "service", "ps", "web")
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["ID", "NAME", "IMAGE", "NODE"]
    assert lines[1].split()[1:7] == ["web.1", "busybox:latest", "h1", "Running", "Running", "5"]
    assert "Running 5 seconds ago" in lines[1]
    assert r"\_ web.1" in lines[2] and '"task: non-zero exit (127)"' in lines[2] and "busybox:latest   " in lines[1]
    assert " gonenode1234 " in lines[2]  # a removed node shows as its ID, as the docker CLI
    rc, out = run(host, "service", "ls")
    assert out.splitlines()[1].split() == ["s1yyyyyyyyyy", "web", "replicated", "1/2", "busybox:latest"]


def _recent() -> str:
    import time

    from shoal.base.util import now_rfc3339

    return now_rfc3339(time.time() - 5)


def test_scale_posts_replicas_with_version(api: tuple[str, dict[Any, Any]]) -> None:
    host, routes = api
    routes[("GET", "/services/web")] = lambda q, b: (200, _service(2))
    routes[("POST", "/services/s1" + "y" * 23 + "/update")] = lambda q, b: (200, {})
    rc, out = run(host, "service", "scale", "--detach", "web=5")
    assert rc == 0 and out == "web scaled to 5\n"
    method, path, query, body = routes["log"][-1]
    assert "version=3" in query and json.loads(body)["Mode"]["Replicated"]["Replicas"] == 5
    rc, _ = run(host, "service", "scale", "web=x")
    assert rc == 1


def test_logs_demultiplexes_and_prefixes(api: tuple[str, dict[Any, Any]]) -> None:
    host, routes = api
    details = f"com.docker.swarm.node.id={NODE['ID']},com.docker.swarm.service.id=s1,com.docker.swarm.task.id=t1"

    def frame(stream: int, data: bytes) -> bytes:
        return bytes([stream, 0, 0, 0]) + len(data).to_bytes(4, "big") + data

    body = frame(1, f"{details} hello\n".encode()) + frame(1, f"{details} world\n".encode())
    t = _task(1, "running")
    t["ID"] = "t1"
    routes[("GET", "/services/web")] = lambda q, b: (200, _service(1))
    routes[("GET", "/services/s1" + "y" * 23 + "/logs")] = lambda q, b: (200, body)
    routes[("GET", "/tasks")] = lambda q, b: (200, [t])
    routes[("GET", "/nodes")] = lambda q, b: (200, [NODE])
    rc, out = run(host, "service", "logs", "web")
    assert rc == 0
    assert out.splitlines() == ["web.1.t1@h1    | hello", "web.1.t1@h1    | world"]


def test_network_create_flags_build_docker_shaped_request() -> None:
    a = cli.build_parser().parse_args(["network", "create", "--subnet", "10.20.0.0/24", "--gateway", "10.20.0.1",
                                       "--ip-range", "10.20.0.128/25", "--attachable", "--label", "a=b",
                                       "--label", "flag", "-o", "k=v", "backend"])
    assert cli.build_network_request(a) == {
        "Name": "backend", "Driver": "overlay", "Options": {"k": "v"}, "Attachable": True, "Internal": False,
        "Ingress": False, "IPAM": {"Driver": "default", "Config": [{"Subnet": "10.20.0.0/24", "Gateway": "10.20.0.1",
                                                  "IPRange": "10.20.0.128/25"}]},
        "Labels": {"a": "b", "flag": ""}}
    a = cli.build_parser().parse_args(["network", "create", "plain"])
    assert cli.build_network_request(a)["IPAM"] == {"Driver": "default", "Config": []}
    a = cli.build_parser().parse_args(["network", "create", "--ingress", "mesh"])
    assert cli.build_network_request(a)["Ingress"] is True
    a = cli.build_parser().parse_args(["network", "create", "--ip-range", "10.1.0.0/25", "x"])
    with pytest.raises(cli.UsageError, match="corresponding subnet"):
        cli.build_network_request(a)


def test_network_ls_table_and_rm(api: tuple[str, dict[Any, Any]]) -> None:
    host, routes = api
    nets = [{"Id": "z" * 25, "Name": "web", "Driver": "overlay", "Scope": "swarm"},
            {"Id": "shoal-bridge", "Name": "bridge", "Driver": "bridge", "Scope": "local"}]
    routes[("GET", "/networks")] = lambda q, b: (200, nets)
    rc, out = run(host, "network", "ls", "-f", "driver=overlay")
    assert rc == 0
    assert out == ("NETWORK ID     NAME     DRIVER    SCOPE\n"
                   "shoal-bridge   bridge   bridge    local\n"
                   "zzzzzzzzzzzz   web      overlay   swarm\n")
    method, path, query, _ = routes["log"][-1]
    assert (method, path) == ("GET", "/networks") and "driver" in query
    routes[("DELETE", "/networks/web")] = lambda q, b: (204, b"")
    assert run(host, "network", "rm", "web") == (0, "web\n")


def test_network_flag_short_and_long_forms() -> None:
    assert cli.parse_network_flag("backend") == {"Target": "backend"}
    assert cli.parse_network_flag("name=backend,alias=db,alias=pg") == {"Target": "backend", "Aliases": ["db", "pg"]}
    with pytest.raises(ValueError, match="invalid field key 'driver'"):
        cli.parse_network_flag("name=x,driver=y")
    a = cli.build_parser().parse_args("service create --name api --network backend busybox".split())
    assert cli.build_service_spec(a)["TaskTemplate"]["Networks"] == [{"Target": "backend"}]


# -- published ports (issue 9) ---------------------------------------------------------------------

def test_publish_flag_short_and_long_forms() -> None:
    assert cli.parse_publish_flag("8080:80") == [
        {"Protocol": "tcp", "TargetPort": 80, "PublishMode": "ingress", "PublishedPort": 8080}]
    assert cli.parse_publish_flag("53/udp") == [{"Protocol": "udp", "TargetPort": 53, "PublishMode": "ingress"}]
    assert [p["PublishedPort"] for p in cli.parse_publish_flag("8080-8081:80-81")] == [8080, 8081]
    assert cli.parse_publish_flag("mode=host,target=80,published=8080,protocol=udp") == [
        {"Protocol": "udp", "PublishMode": "host", "TargetPort": 80, "PublishedPort": 8080}]
    for bad, msg in (("8080:http", "invalid target port 'http'"), ("70000:80", "invalid published port"),
                     ("80/icmp", "invalid protocol"), ("mode=bridge,target=80", "invalid publish mode"),
                     ("published=80", "missing mandatory field 'target'"), ("target=80,foo=1", "invalid field key"),
                     ("1.2.3.4:80:80", "host IP is not supported"), ("8080-8082:80-81", "differ in length")):
        with pytest.raises(ValueError, match=msg):
            cli.parse_publish_flag(bad)
    a = cli.build_parser().parse_args("service create --name web -p 8080:80 --publish mode=host,target=22,published=2222 "
                                      "--endpoint-mode vip busybox".split())
    assert cli.build_service_spec(a)["EndpointSpec"] == {"Mode": "vip", "Ports": [
        {"Protocol": "tcp", "TargetPort": 80, "PublishMode": "ingress", "PublishedPort": 8080},
        {"Protocol": "tcp", "PublishMode": "host", "TargetPort": 22, "PublishedPort": 2222}]}
    a = cli.build_parser().parse_args("service create --name web -p 80/gre busybox".split())
    with pytest.raises(cli.UsageError, match="invalid protocol"):
        cli.build_service_spec(a)


def test_ports_column_as_docker() -> None:
    ep = {"Ports": [{"Protocol": "udp", "TargetPort": 53, "PublishedPort": 30001, "PublishMode": "ingress"},
                    {"Protocol": "tcp", "TargetPort": 81, "PublishedPort": 8081, "PublishMode": "ingress"},
                    {"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080, "PublishMode": "ingress"},
                    {"Protocol": "tcp", "TargetPort": 22, "PublishedPort": 2222, "PublishMode": "host"},
                    {"Protocol": "tcp", "TargetPort": 90, "PublishedPort": 9090}]}
    assert fmt.ports(ep) == "*:8080-8081->80-81/tcp, *:9090->90/tcp, *:30001->53/udp, *:2222->22/tcp"
    assert fmt.ports(None) == "" and fmt.ports({"Spec": {"Mode": "vip"}}) == ""
    running = {"Status": {"State": "running"}, "Endpoint": ep}
    assert fmt.task_ports(running) == "*:2222->22/tcp"
    assert fmt.task_ports({**running, "Status": {"State": "shutdown"}}) == ""


def test_service_update_network_and_publish_flags(api: tuple[str, dict[Any, Any]]) -> None:
    host, routes = api
    svc = _service(2)
    svc["Spec"]["TaskTemplate"]["Networks"] = [{"Target": "back" + "x" * 21}]
    svc["Spec"]["EndpointSpec"] = {"Mode": "vip", "Ports": [
        {"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080, "PublishMode": "ingress"},
        {"Protocol": "udp", "TargetPort": 53, "PublishedPort": 5353, "PublishMode": "ingress"}]}
    routes[("GET", "/services/web")] = lambda q, b: (200, svc)
    routes[("GET", "/networks/back")] = lambda q, b: (200, {"Id": "back" + "x" * 21, "Name": "back"})
    routes[("GET", "/networks/front")] = lambda q, b: (200, {"Id": "front" + "x" * 20, "Name": "front"})
    routes[("POST", "/services/s1" + "y" * 23 + "/update")] = lambda q, b: (200, {"Warnings": []})
    rc, out = run(host, "service", "update", "-d", "--network-rm", "back", "--network-add", "name=front,alias=f",
                  "--publish-rm", "8080:80", "--publish-add", "9090:90", "--publish-add",
                  "mode=host,target=22,published=2222", "web")
    assert (rc, out) == (0, "web\n")
    method, path, query, body = routes["log"][-1]
    assert method == "POST" and "version=3" in query
    spec = json.loads(body)
    assert spec["TaskTemplate"]["Networks"] == [{"Target": "front", "Aliases": ["f"]}]
    assert spec["EndpointSpec"] == {"Mode": "vip", "Ports": [
        {"Protocol": "udp", "TargetPort": 53, "PublishedPort": 5353, "PublishMode": "ingress"},
        {"Protocol": "tcp", "TargetPort": 90, "PublishMode": "ingress", "PublishedPort": 9090},
        {"Protocol": "tcp", "PublishMode": "host", "TargetPort": 22, "PublishedPort": 2222}]}
    # removing a network the service is not on, or adding one twice: refused before any request
    n = len(routes["log"])
    assert run(host, "service", "update", "-d", "--network-rm", "front", "web")[0] == 1
    assert run(host, "service", "update", "-d", "--network-add", "back", "web")[0] == 1
    assert not [r for r in routes["log"][n:] if r[0] == "POST"]
    # a daemon error (a port held by another service) is printed as docker does
    routes[("POST", "/services/s1" + "y" * 23 + "/update")] = lambda q, b: (409, {
        "message": "port '9090/tcp' is already in use by service 'api' (a1) as an ingress port"})
    assert run(host, "service", "update", "-d", "--publish-add", "9090:90", "web")[0] == 1
