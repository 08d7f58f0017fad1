"""Shared fixtures for the root, one-host integration tests: a tiny busybox OCI image archive,
an image store, and skip-unless-root; for the overlay tests, scratch hosts, stored networks and
tasks, and an executor on a scratch runtime. Everything made here is removed at the end of the
session."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from agent_runtime.containers import Runtime
from agent_runtime.images import ImageStore
from agent_runtime.oci.cgroups import Cgroup
from overlaynet import netns
from overlaynet.bridge import LocalBridge
from worker.executor import Executor

BUSYBOX = "/usr/bin/busybox"
TEST_REF = "shoal.test/busybox:latest"

WHOAMI_CGI = "#!/bin/sh\necho 'Content-Type: text/plain'\necho\nhostname\n"

UNDERLAY = ("192.0.2.1", "192.0.2.2")
"""The underlay addresses (/24) of scratch hosts a and b (:func:`underlay_hosts`)."""
SUBNET, GW = "10.0.1.0/24", "10.0.1.1"
"""The overlay network the executor tests attach their tasks to (:func:`overlay_network`)."""


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` (output captured as text, 20 s at most)."""
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=20, check=check)


def ns_run(ns: Path | str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """:func:`run` ``cmd`` in network namespace ``ns``."""
    return run("nsenter", f"--net={ns}", "--", *cmd, check=check)


def links(ns: Path | str) -> dict[str, dict[str, Any]]:
    """The interfaces of namespace ``ns`` by name (``ip -j -d addr show``)."""
    return {link["ifname"]: link for link in json.loads(ns_run(ns, "ip", "-j", "-d", "addr", "show").stdout)}


def tables(ns: Path | str) -> list[str]:
    """The names of the nftables tables in namespace ``ns``."""
    out = ns_run(ns, "nft", "-j", "list", "tables").stdout
    return [o["table"]["name"] for o in json.loads(out)["nftables"] if "table" in o]


def netns_socket(ns: Path | str, kind: int, addr: tuple[str, int] | None = None, *, listen: int | None = None,
                 timeout: float | None = None, reuse: bool = False) -> socket.socket:
    """An IPv4 socket of ``kind`` (``socket.SOCK_STREAM``/``SOCK_DGRAM``) made inside network
    namespace ``ns`` (it keeps that namespace): with SO_REUSEADDR when ``reuse``, bound to ``addr``
    and listening with backlog ``listen`` when given, with ``timeout``."""
    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, kind)
        if reuse:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if addr is not None:
            s.bind(addr)
        if listen is not None:
            s.listen(listen)
        if timeout is not None:
            s.settimeout(timeout)
        return s

    return netns.run_in_netns(ns, make)


def serve(stop: threading.Event, receive: Callable[[], tuple[Any, Any]], answer: Callable[[Any, Any], object]) -> None:
    """A daemon thread that, until ``stop`` is set, takes ``(what, peer)`` from ``receive`` (a
    socket's ``accept`` or ``recvfrom``, with a timeout; timeouts and errors are skipped) and calls
    ``answer(what, peer)``."""
    def loop() -> None:
        while not stop.is_set():
            try:
                got, peer = receive()
            except (TimeoutError, OSError):
                continue
            answer(got, peer)

    threading.Thread(target=loop, daemon=True).start()


def _add_file(tf: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mode = mode
    ti.mtime = 0
    tf.addfile(ti, io.BytesIO(data))


def _add_dir(tf: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
    ti = tarfile.TarInfo(name)
    ti.type = tarfile.DIRTYPE
    ti.mode = mode
    ti.mtime = 0
    tf.addfile(ti)


def busybox_layer() -> bytes:
    """An uncompressed layer tar: /bin/busybox and its applet symlinks, /etc/{passwd,group}, /www with
    index.html and cgi-bin/whoami (prints the hostname), /tmp (1777)."""
    applets = subprocess.run([BUSYBOX, "--list"], check=True, capture_output=True, text=True).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for d in ("bin", "etc", "root", "www", "www/cgi-bin", "proc", "sys", "dev", "var"):
            _add_dir(tf, d, 0o700 if d == "root" else 0o755)
        _add_dir(tf, "tmp", 0o1777)
        _add_file(tf, "bin/busybox", Path(BUSYBOX).read_bytes(), 0o755)
        for a in sorted(set(applets)):
            if a == "busybox":
                continue
            ti = tarfile.TarInfo(f"bin/{a}")
            ti.type = tarfile.SYMTYPE
            ti.linkname = "busybox"
            ti.mode = 0o777
            tf.addfile(ti)
        _add_file(tf, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
                  b"app:x:1000:1000:app:/tmp:/bin/sh\n")
        _add_file(tf, "etc/group", b"root:x:0:\napp:x:1000:\nstaff:x:50:app\nnogroup:x:65534:\n")
        _add_file(tf, "www/index.html", b"<html><body>shoal busybox</body></html>\n")
        _add_file(tf, "www/cgi-bin/whoami", WHOAMI_CGI.encode(), 0o755)
    return buf.getvalue()


def make_busybox_oci_archive(path: Path, ref: str = TEST_REF, multi_arch: bool = False) -> Path:
    """Write an OCI image-layout archive (tar) of a busybox image named ``ref`` to ``path``; return ``path``.

    The layer is gzip-compressed; index.json names the image with ``io.containerd.image.name`` (full ref)
    and ``org.opencontainers.image.ref.name`` (tag), as containerd/skopeo do. With ``multi_arch`` the
    named descriptor is a nested image index listing a (fake, same-layer) linux/arm64 manifest first
    and the linux/amd64 one second, so a puller must choose by platform.
    """
    layer = busybox_layer()
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    gz = gzip.compress(layer, mtime=0)
    layer_digest = "sha256:" + hashlib.sha256(gz).hexdigest()
    config = {
        "architecture": "amd64", "os": "linux", "created": "2026-01-01T00:00:00Z",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                   "Cmd": ["sh"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "tests/integration/conftest.py"}],
    }
    config_raw = json.dumps(config).encode()
    config_digest = "sha256:" + hashlib.sha256(config_raw).hexdigest()
    manifest: dict[str, Any] = {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                   "size": len(config_raw)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest,
                    "size": len(gz)}],
    }
    manifest_raw = json.dumps(manifest).encode()
    manifest_digest = "sha256:" + hashlib.sha256(manifest_raw).hexdigest()
    tag = ref.rsplit(":", 1)[1] if ":" in ref.rsplit("/", 1)[-1] else "latest"
    blobs = [(config_digest, config_raw), (layer_digest, gz), (manifest_digest, manifest_raw)]
    top = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
           "size": len(manifest_raw), "platform": {"architecture": "amd64", "os": "linux"}}
    if multi_arch:
        arm_config = json.dumps({**config, "architecture": "arm64"}).encode()
        arm_config_digest = "sha256:" + hashlib.sha256(arm_config).hexdigest()
        arm_manifest = json.dumps({**manifest, "config": {**manifest["config"], "digest": arm_config_digest,
                                                           "size": len(arm_config)}}).encode()
        arm_digest = "sha256:" + hashlib.sha256(arm_manifest).hexdigest()
        nested = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                             "manifests": [
                                 {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": arm_digest,
                                  "size": len(arm_manifest), "platform": {"architecture": "arm64", "os": "linux"}},
                                 top]}).encode()
        nested_digest = "sha256:" + hashlib.sha256(nested).hexdigest()
        blobs += [(arm_config_digest, arm_config), (arm_digest, arm_manifest), (nested_digest, nested)]
        top = {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": nested_digest,
               "size": len(nested)}
    top["annotations"] = {"io.containerd.image.name": ref, "org.opencontainers.image.ref.name": tag}
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [top]}
    with tarfile.open(path, "w") as tf:
        _add_file(tf, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        _add_file(tf, "index.json", json.dumps(index).encode())
        _add_dir(tf, "blobs")
        _add_dir(tf, "blobs/sha256")
        for digest, data in blobs:
            _add_file(tf, f"blobs/sha256/{digest.split(':')[1]}", data)
    return path


def require_root() -> None:
    """Skip the calling test unless running as root."""
    if os.geteuid() != 0:
        pytest.skip("needs root")


@pytest.fixture(scope="session")
def busybox_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of an OCI archive of the busybox test image (``shoal.test/busybox:latest``)."""
    if not Path(BUSYBOX).exists():
        pytest.skip("busybox-static is not installed")
    return make_busybox_oci_archive(tmp_path_factory.mktemp("img") / "busybox-oci.tar")


@pytest.fixture
def scratch_dir() -> Iterator[Path]:
    """A fresh directory on the real disk (not tmpfs: overlayfs upper dirs need xattr support), removed after."""
    base = Path("/var/tmp/shoal-tests")
    base.mkdir(parents=True, exist_ok=True)
    d = Path(os.path.realpath(base)) / f"t{os.getpid()}-{os.urandom(4).hex()}"
    d.mkdir()
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
        try:
            base.rmdir()  # only when no other test session is using it
        except OSError:
            pass


async def remove_containers(rt: Runtime) -> None:
    """Remove every container of ``rt``, going on past failures (printed)."""
    for st in rt.list():
        try:
            await rt.remove(st.id)
        except Exception as e:  # noqa: BLE001 - keep cleaning the others
            print(f"cleanup of {st.id} failed: {e}")


async def cleanup_runtime(rt: Runtime, cgroup_parent: str) -> None:
    """Remove every container of ``rt`` and its cgroup parent, going on past failures (printed)."""
    await remove_containers(rt)
    try:
        Cgroup("/" + cgroup_parent).destroy(timeout=5)
    except OSError as e:
        print(f"cleanup of cgroup {cgroup_parent} failed: {e}")


@contextlib.asynccontextmanager
async def scratch_runtime(scratch_dir: Path, busybox_archive: Path, name: str = "shoal-test",
                          **kwargs: Any) -> AsyncIterator[Runtime]:
    """A Runtime (shoal-oci) on ``scratch_dir`` with the busybox test image loaded, under a
    cgroup parent of its own (``<name>-<pid>-<random>``); ``kwargs`` go to Runtime (e.g.
    ``log_opts``). Everything it made is removed on exit, even on failure."""
    require_root()
    images = ImageStore(scratch_dir / "images")
    assert images.load(busybox_archive) == [TEST_REF]
    parent = f"{name}-{os.getpid()}-{os.urandom(3).hex()}"
    rt = Runtime(scratch_dir / "containers", scratch_dir / "exec", images, parent, "shoal", **kwargs)
    try:
        yield rt
    finally:
        await cleanup_runtime(rt, parent)


@pytest.fixture
def cgroup_parent() -> Iterator[str]:
    """A cgroup parent of the test's own for a Runtime's containers, destroyed afterwards."""
    name = f"shoal-test-{os.getpid()}-{os.urandom(3).hex()}"
    try:
        yield name
    finally:
        Cgroup(name).destroy()


@contextlib.asynccontextmanager
async def scratch_executor(scratch_dir: Path, busybox_archive: Path, cgroup_parent: str, bridge_name: str,
                           reports: list[tuple[str, dict[str, Any]]], **kwargs: Any) -> AsyncIterator[Executor]:
    """An Executor (in the calling thread's network namespace) on a Runtime on ``scratch_dir`` with
    the busybox test image loaded (containers under ``cgroup_parent``) and a local bridge named
    ``bridge_name``; it appends ``(task ID, status)`` to ``reports``; ``kwargs`` go to Executor
    (``overlay``, ``resolv_conf``, ...). On exit, even on failure: the executor is closed, every
    container removed and the bridge cleaned up."""
    images = ImageStore(scratch_dir / "images", insecure_registries=["127.0.0.1:1"])
    images.load(busybox_archive)
    runtime = Runtime(scratch_dir / "containers", scratch_dir / "exec", images, cgroup_parent=cgroup_parent)
    bridge = LocalBridge(bridge_name, scratch_dir / "exec")
    ex = Executor(runtime, images, bridge, lambda tid, st: reports.append((tid, st)), **kwargs)
    try:
        yield ex
    finally:
        await ex.close()
        await remove_containers(runtime)
        bridge.cleanup()


def executor_node(node_id: str, bridge_subnet: str, bridge_gw: str) -> dict[str, Any]:
    """The node object an executor on host a gets: ready at a's underlay address, with its local
    bridge's subnet and gateway."""
    return {"ID": node_id, "ShoalBridge": {"Subnet": bridge_subnet, "Gateway": bridge_gw},
            "Status": {"State": "ready", "Addr": UNDERLAY[0]}}


def overlay_network(net_id: str, name: str, vni: int, subnet: str, gateway: str) -> dict[str, Any]:
    """A stored overlay network (manager/controlapi/networks.py's shape) as tasks carry it."""
    return {
        "ID": net_id,
        "Spec": {"Name": name, "DriverConfiguration": {"Name": "overlay", "Options": {}}, "Scope": "swarm"},
        "DriverState": {"Name": "overlay", "Options": {"com.docker.network.driver.overlay.vxlanid_list": str(vni)}},
        "IPAMOptions": {"Driver": {"Name": "default"}, "Configs": [{"Subnet": subnet, "Gateway": gateway}]},
    }


def overlay_task(tid: str, service_id: str, args: list[str], bridge: tuple[str, str, str],
                 network: dict[str, Any], overlay_addr: str, desired: str = "running") -> dict[str, Any]:
    """An assigned task of the busybox image running ``args``, attached to the node's local bridge
    (``bridge`` = (subnet, gateway, the task's address with its prefix)) and then to overlay
    ``network`` at ``overlay_addr`` (a /24), as the scheduler and the allocator leave it."""
    subnet, gateway, bridge_addr = bridge
    return {
        "ID": tid, "ServiceID": service_id, "Slot": 1, "DesiredState": desired,
        "Status": {"State": "assigned", "Message": "scheduler assigned task to node"},
        "Spec": {"ContainerSpec": {"Image": TEST_REF, "Args": args, "StopGracePeriod": 1_000_000_000},
                 "Resources": {"Limits": {"MemoryBytes": 64 << 20, "Pids": 64}}},
        "NetworksAttachments": [
            {"Network": {"ID": "bridge", "Spec": {"Name": "bridge", "Driver": "bridge", "Scope": "local"},
                         "DriverState": {"Name": "bridge"},
                         "IPAMOptions": {"Configs": [{"Subnet": subnet, "Gateway": gateway}]}},
             "Addresses": [bridge_addr]},
            {"Network": network, "Addresses": [f"{overlay_addr}/24"]},
        ],
    }


@contextlib.contextmanager
def underlay_hosts(root: Path, tag: str, underlay: Sequence[str] = UNDERLAY,
                   mtu: int = 1400) -> Iterator[list[Path]]:
    """Two scratch "hosts" for overlay tests: network namespaces ``root/<tag>a`` and ``<tag>b``
    (loopback up) joined by a veth pair ``<tag>u0``/``<tag>u1`` of ``mtu`` bytes holding the
    ``underlay`` addresses (/24). Yields the two namespace paths; removes both on exit, which takes
    the veth and anything else left in them (raises ``AssertionError`` listing what could not be
    removed)."""
    hosts = [root / f"{tag}{side}" for side in "ab"]
    made: list[Path] = []
    try:
        for ns in hosts:
            netns.create(ns)
            made.append(ns)
            subprocess.run(["nsenter", f"--net={ns}", "ip", "link", "set", "lo", "up"], check=True, timeout=20)
        subprocess.run(["ip", "link", "add", f"{tag}u0", "mtu", str(mtu), "netns", str(hosts[0]), "type", "veth",
                        "peer", "name", f"{tag}u1", "mtu", str(mtu), "netns", str(hosts[1])], check=True, timeout=20)
        for i, ns in enumerate(hosts):
            for cmd in (["addr", "add", f"{underlay[i]}/24", "dev", f"{tag}u{i}"], ["link", "set", f"{tag}u{i}", "up"]):
                subprocess.run(["nsenter", f"--net={ns}", "ip", *cmd], check=True, timeout=20)
        yield hosts
    finally:
        errors: list[OSError] = []
        for ns in made:
            try:
                netns.remove(ns)
            except OSError as e:
                errors.append(e)
        assert not errors, errors
