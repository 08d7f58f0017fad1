"""A small synchronous Docker Engine API client (what the `shoal` CLI and the lab speak).

Follows the Docker Engine API (v1.41+, moby ``api/swagger.yaml``): JSON bodies, errors as
``{"message": "..."}`` with an HTTP status >= 400. The daemon is picked by ``host``:
``unix:///run/shoal/shoal.sock`` (the default), a bare socket path, or ``tcp://HOST:PORT``;
when ``host`` is None the ``SHOAL_HOST`` environment variable is read, then the default.

Built on ``http.client`` so the CLI starts fast and needs no event loop.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import urllib.parse
from collections.abc import Iterator
from typing import Any, BinaryIO

DEFAULT_HOST = "unix:///run/shoal/shoal.sock"
API_PREFIX = ""  # unversioned paths; shoald serves both /x and /v1.xx/x


class APIError(Exception):
    """The daemon answered with an error status.

    ``status`` is the HTTP status code (e.g. 400, 404, 409, 503); ``message`` is the
    ``message`` field of the JSON error body (or the raw body when it is not JSON).
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class ConnectError(Exception):
    """The daemon could not be reached (socket missing, connection refused, timeout)."""


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if self.timeout is not None:
            s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


def resolve_host(host: str | None = None) -> str:
    """Return the daemon address to use: ``host``, else ``$SHOAL_HOST``, else DEFAULT_HOST."""
    return host or os.environ.get("SHOAL_HOST") or DEFAULT_HOST


def encode_filters(filters: dict[str, list[str]] | None) -> str | None:
    """Encode ``{"service": ["id"]}`` as the API's ``filters`` query value (JSON map of lists)."""
    if not filters:
        return None
    return json.dumps(filters, separators=(",", ":"))


class Client:
    """Docker Engine API client for one daemon.

    ``host``: see module docstring. ``timeout``: seconds per request (socket timeout).
    Raises ValueError for a malformed host.
    """

    def __init__(self, host: str | None = None, timeout: float = 60.0) -> None:
        self.host = resolve_host(host)
        self.timeout = timeout
        if self.host.startswith("unix://"):
            self._unix: str | None = self.host[len("unix://"):]
            self._tcp: tuple[str, int] | None = None
        elif self.host.startswith("/"):
            self._unix, self._tcp = self.host, None
        elif self.host.startswith("tcp://"):
            u = urllib.parse.urlsplit(self.host)
            if not u.hostname or not u.port:
                raise ValueError(f"bad host {self.host!r}: want tcp://HOST:PORT")
            self._unix, self._tcp = None, (u.hostname, u.port)
        else:
            raise ValueError(f"bad host {self.host!r}: want unix:///path/to/socket or tcp://HOST:PORT")

    # -- plumbing -----------------------------------------------------------------------------
    def _conn(self, timeout: float | None) -> http.client.HTTPConnection:
        if self._unix is not None:
            return _UnixHTTPConnection(self._unix, timeout)
        assert self._tcp is not None
        return http.client.HTTPConnection(self._tcp[0], self._tcp[1], timeout=timeout)

    def _url(self, path: str, params: dict[str, Any] | None) -> str:
        url = API_PREFIX + path
        if params:
            q = {k: (("1" if v else "0") if isinstance(v, bool) else str(v)) for k, v in params.items() if v is not None}
            if q:
                url += "?" + urllib.parse.urlencode(q)
        return url

    def open(self, method: str, path: str, params: dict[str, Any] | None = None,
             body: Any = None, headers: dict[str, str] | None = None,
             timeout: float | None = -1.0) -> http.client.HTTPResponse:
        """Send a request and return the open response (status < 400), for streaming.

        ``body`` may be None, bytes, a binary file object, or anything JSON-serialisable.
        ``timeout`` -1 means the client's default; None means no timeout (follow streams).
        Raises APIError for status >= 400 and ConnectError when the daemon cannot be reached.
        """
        hdrs = dict(headers or {})
        data: bytes | BinaryIO | None
        if body is None:
            data = None
        elif isinstance(body, bytes):
            data = body
            hdrs.setdefault("Content-Type", "application/octet-stream")
        elif hasattr(body, "read"):
            data = body
            hdrs.setdefault("Content-Type", "application/x-tar")
        else:
            data = json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        if data is not None and hasattr(data, "read"):
            size = os.fstat(data.fileno()).st_size  # type: ignore[union-attr]
            hdrs["Content-Length"] = str(size)
        conn = self._conn(self.timeout if timeout == -1.0 else timeout)
        try:
            conn.request(method, self._url(path, params), body=data, headers=hdrs)
            resp = conn.getresponse()
        except TimeoutError as e:
            conn.close()
            raise ConnectError(f"timed out after {conn.timeout}s waiting for the Shoal daemon at {self.host}") from e
        except OSError as e:
            conn.close()
            raise ConnectError(f"Cannot connect to the Shoal daemon at {self.host} ({e}). Is shoald running?") from e
        if resp.status >= 400:
            raw = resp.read()
            conn.close()
            try:
                msg = json.loads(raw).get("message") or raw.decode(errors="replace")
            except (ValueError, AttributeError):
                msg = raw.decode(errors="replace").strip() or http.client.responses.get(resp.status, "error")
            raise APIError(resp.status, str(msg))
        return resp

    def request(self, method: str, path: str, params: dict[str, Any] | None = None,
                body: Any = None, headers: dict[str, str] | None = None,
                timeout: float | None = -1.0) -> Any:
        """Send a request and return the decoded JSON body (None for an empty body, str for text).

        Raises APIError / ConnectError as ``open``.
        """
        resp = self.open(method, path, params, body, headers, timeout)
        try:
            raw = resp.read()
        finally:
            resp.close()
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode(errors="replace")

    # -- system -------------------------------------------------------------------------------
    def ping(self) -> str:
        """GET /_ping; returns the body ("OK")."""
        return str(self.request("GET", "/_ping"))

    def info(self) -> dict[str, Any]:
        """GET /info (SystemInfo, with its ``Swarm`` section)."""
        return dict(self.request("GET", "/info"))

    def version(self) -> dict[str, Any]:
        """GET /version."""
        return dict(self.request("GET", "/version"))

    # -- swarm --------------------------------------------------------------------------------
    def swarm_init(self, advertise_addr: str = "", listen_addr: str = "0.0.0.0:2377",
                   force_new_cluster: bool = False, default_addr_pool: list[str] | None = None,
                   subnet_size: int = 0, data_path_port: int = 0) -> str:
        """POST /swarm/init; returns the (new) node ID. ``force_new_cluster``: on a manager of a
        swarm without quorum, keep the state and become its only manager. ``default_addr_pool``
        (CIDRs), ``subnet_size`` and ``data_path_port`` (0 = the daemon's default) as the docker
        CLI sends them (``DefaultAddrPool``, ``SubnetSize``, ``DataPathPort``)."""
        body = {"ListenAddr": listen_addr, "AdvertiseAddr": advertise_addr,
                "ForceNewCluster": force_new_cluster, "Spec": {},
                "DefaultAddrPool": list(default_addr_pool or []), "SubnetSize": subnet_size,
                "DataPathPort": data_path_port}
        return str(self.request("POST", "/swarm/init", body=body))

    def swarm_join(self, token: str, remote: str, advertise_addr: str = "", listen_addr: str = "0.0.0.0:2377") -> None:
        """POST /swarm/join with ``RemoteAddrs=[remote]`` and ``JoinToken=token``."""
        body = {"ListenAddr": listen_addr, "AdvertiseAddr": advertise_addr, "RemoteAddrs": [remote],
                "JoinToken": token}
        self.request("POST", "/swarm/join", body=body, timeout=max(self.timeout, 60.0))

    def swarm_inspect(self) -> dict[str, Any]:
        """GET /swarm (ClusterInfo + JoinTokens)."""
        return dict(self.request("GET", "/swarm"))

    def swarm_leave(self, force: bool = False) -> None:
        """POST /swarm/leave?force=. No client timeout: the daemon stops and removes this node's
        tasks first (each within its stop grace period, as ``docker swarm leave`` waits too)."""
        self.request("POST", "/swarm/leave", params={"force": force}, timeout=None)

    # -- nodes --------------------------------------------------------------------------------
    def nodes(self, filters: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
        """GET /nodes."""
        return list(self.request("GET", "/nodes", params={"filters": encode_filters(filters)}) or [])

    def node(self, node_id: str) -> dict[str, Any]:
        """GET /nodes/{id} (ID, name or prefix, as the daemon resolves it)."""
        return dict(self.request("GET", f"/nodes/{urllib.parse.quote(node_id)}"))

    def node_update(self, node_id: str, version: int, spec: dict[str, Any]) -> None:
        """POST /nodes/{id}/update?version= with a NodeSpec."""
        self.request("POST", f"/nodes/{urllib.parse.quote(node_id)}/update", params={"version": version}, body=spec)

    # -- services and tasks -------------------------------------------------------------------
    def services(self, filters: dict[str, list[str]] | None = None, status: bool = True) -> list[dict[str, Any]]:
        """GET /services?status=true (ServiceStatus carries running/desired counts)."""
        params = {"filters": encode_filters(filters), "status": status}
        return list(self.request("GET", "/services", params=params) or [])

    def service(self, service_id: str) -> dict[str, Any]:
        """GET /services/{id} (ID, name or prefix)."""
        return dict(self.request("GET", f"/services/{urllib.parse.quote(service_id)}",
                                 params={"insertDefaults": False}))

    def service_create(self, spec: dict[str, Any]) -> dict[str, Any]:
        """POST /services/create; returns ``{"ID", "Warnings"?}``."""
        return dict(self.request("POST", "/services/create", body=spec))

    def service_update(self, service_id: str, version: int, spec: dict[str, Any]) -> dict[str, Any]:
        """POST /services/{id}/update?version=; returns ``{"Warnings"?}``."""
        res = self.request("POST", f"/services/{urllib.parse.quote(service_id)}/update",
                           params={"version": version}, body=spec)
        return dict(res or {})

    def service_plan(self, spec: dict[str, Any], service_id: str | None = None) -> dict[str, Any]:
        """Shoal's dry run: ``POST /services/plan`` (a new service) or ``POST /services/{id}/plan``
        (an update of ``service_id``) with a ServiceSpec; returns ``{"Tasks": [{"Slot"?, "NodeID"?,
        "Node"?, "Error"?, "Unchanged"?}], "Warnings"}``. Nothing is written."""
        path = "/services/plan" if service_id is None else f"/services/{urllib.parse.quote(service_id)}/plan"
        return dict(self.request("POST", path, body=spec) or {})

    def service_remove(self, service_id: str) -> None:
        """DELETE /services/{id}."""
        self.request("DELETE", f"/services/{urllib.parse.quote(service_id)}")

    def tasks(self, filters: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
        """GET /tasks."""
        return list(self.request("GET", "/tasks", params={"filters": encode_filters(filters)}) or [])

    def task(self, task_id: str) -> dict[str, Any]:
        """GET /tasks/{id}."""
        return dict(self.request("GET", f"/tasks/{urllib.parse.quote(task_id)}"))

    def service_logs(self, service_id: str, follow: bool = False, tail: str = "all",
                     timestamps: bool = False, since: str | None = None) -> Iterator[tuple[int, bytes]]:
        """GET /services/{id}/logs; yields ``(stream, line)`` (1 = stdout, 2 = stderr, 3 = a warning
        or error from the daemon: the nodes whose lines could not be read). ``since``: seconds since
        the epoch as Docker sends it (:func:`shoal.cli.events_cmd.timestamp_arg`).

        The body is Docker's multiplexed stream (8-byte header: stream, 0, 0, 0, big-endian
        length) when the daemon sends one; a plain body is split into lines as stdout. A follow's
        warning comes from the ``X-Shoal-Warning`` header, first.
        """
        params = {"stdout": True, "stderr": True, "follow": follow, "tail": tail, "timestamps": timestamps,
                  "details": True, "since": since}
        resp = self.open("GET", f"/services/{urllib.parse.quote(service_id)}/logs", params=params,
                         timeout=None if follow else -1.0)
        try:
            warning = resp.getheader("X-Shoal-Warning")
            if warning and follow:
                yield 3, warning.encode()
            yield from _demux(resp)
        finally:
            resp.close()

    # -- networks -----------------------------------------------------------------------------
    def networks(self, filters: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
        """GET /networks?filters= (the node's bridge, and the swarm networks on a manager)."""
        return list(self.request("GET", "/networks", params={"filters": encode_filters(filters)}) or [])

    def network(self, ref: str) -> dict[str, Any]:
        """GET /networks/{id} (ID, name or ID prefix)."""
        return dict(self.request("GET", f"/networks/{urllib.parse.quote(ref, safe='')}"))

    def network_create(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST /networks/create with a NetworkCreateRequest; returns ``{"Id", "Warning"}``."""
        return dict(self.request("POST", "/networks/create", body=body))

    def network_remove(self, ref: str) -> None:
        """DELETE /networks/{id}."""
        self.request("DELETE", f"/networks/{urllib.parse.quote(ref, safe='')}")

    # -- images -------------------------------------------------------------------------------
    def images_load(self, archive: BinaryIO) -> Iterator[dict[str, Any]]:
        """POST /images/load with the tar as the body; yields the JSON progress messages."""
        resp = self.open("POST", "/images/load", params={"quiet": False}, body=archive,
                         headers={"Content-Type": "application/x-tar"}, timeout=None)
        try:
            yield from _json_stream(resp)
        finally:
            resp.close()

    def images_pull(self, image: str, tag: str = "") -> Iterator[dict[str, Any]]:
        """POST /images/create?fromImage=&tag=; yields the JSON progress messages."""
        resp = self.open("POST", "/images/create", params={"fromImage": image, "tag": tag or None}, timeout=None)
        try:
            yield from _json_stream(resp)
        finally:
            resp.close()

    def events(self, since: str | None = None, until: str | None = None,
               filters: dict[str, list[str]] | None = None) -> Iterator[dict[str, Any]]:
        """GET /events; yields Docker's event messages until ``until`` passes (never without it)."""
        resp = self.open("GET", "/events", params={"since": since, "until": until,
                                                   "filters": encode_filters(filters)}, timeout=None)
        try:
            yield from _json_stream(resp)
        finally:
            resp.close()

    def images(self) -> list[dict[str, Any]]:
        """GET /images/json (ImageSummary list)."""
        return list(self.request("GET", "/images/json") or [])


def _json_stream(resp: http.client.HTTPResponse) -> Iterator[dict[str, Any]]:
    buf = b""
    while True:
        chunk = resp.read1(65536)
        if not chunk:
            break
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line.strip():
                yield _decode_msg(line)
    if buf.strip():
        yield _decode_msg(buf)


def _decode_msg(line: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except ValueError:
        return {"stream": line.decode(errors="replace") + "\n"}
    return obj if isinstance(obj, dict) else {"stream": str(obj) + "\n"}


def _demux(resp: http.client.HTTPResponse) -> Iterator[tuple[int, bytes]]:
    """Split a log body into lines; handles the multiplexed (stdcopy) framing and plain text."""
    buf = b""
    mux: bool | None = None
    pending: dict[int, bytes] = {1: b"", 2: b"", 3: b""}
    while True:
        chunk = resp.read1(65536)
        if not chunk:
            break
        buf += chunk
        if mux is None and len(buf) >= 8:
            mux = buf[0] in (0, 1, 2, 3) and buf[1:4] == b"\0\0\0"
        if mux is None:
            continue
        if mux:
            while len(buf) >= 8:
                size = int.from_bytes(buf[4:8], "big")
                if len(buf) < 8 + size:
                    break
                stream = buf[0] if buf[0] in (2, 3) else 1
                pending[stream] += buf[8:8 + size]
                buf = buf[8 + size:]
                while b"\n" in pending[stream]:
                    line, pending[stream] = pending[stream].split(b"\n", 1)
                    yield stream, line
        else:
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                yield 1, line
    if mux:
        for stream, rest in pending.items():
            if rest:
                yield stream, rest
    elif buf:
        yield 1, buf.rstrip(b"\n")
