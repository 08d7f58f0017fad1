"""OCI config.json generation from a ContainerSpec and an image config (no root needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_runtime.bundle import DEFAULT_CAP_MASK, BundleError, build_config, merge_env, resolve_user
from agent_runtime.containers import hosts_file
from agent_runtime.oci.libc import cap_mask
from agent_runtime.spec import ContainerSpec

CID = "ab" * 32


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\nweb:x:33:33::/var/www:/bin/sh\n")
    (tmp_path / "etc/group").write_text("root:x:0:\nweb:x:33:\nlog:x:4:web\n")
    return tmp_path


def test_docker_default_caps_mask() -> None:
    from agent_runtime.bundle import DEFAULT_CAPS

    assert cap_mask(DEFAULT_CAPS) == DEFAULT_CAP_MASK == 0xA80425FB


def test_args_follow_docker_rules(rootfs: Path) -> None:
    img = {"Entrypoint": ["/ep"], "Cmd": ["c1"], "Env": ["PATH=/bin", "A=1"], "WorkingDir": "/w", "User": "web"}
    cfg = build_config(ContainerSpec(id=CID, image="x"), img, rootfs, rootfs, "shoal")
    p = cfg["process"]
    assert p["args"] == ["/ep", "c1"] and p["cwd"] == "/w" and p["user"] == {"uid": 33, "gid": 33,
                                                                             "additionalGids": [4]}
    assert "PATH=/bin" in p["env"] and "A=1" in p["env"] and f"HOSTNAME={CID[:12]}" in p["env"]
    cfg = build_config(ContainerSpec(id=CID, image="x", args=["a2"]), img, rootfs, rootfs, "shoal")
    assert cfg["process"]["args"] == ["/ep", "a2"]
    cfg = build_config(ContainerSpec(id=CID, image="x", command=["httpd", "-f"]), img, rootfs, rootfs, "shoal")
    assert cfg["process"]["args"] == ["httpd", "-f"]  # a new entrypoint drops the image's Cmd
    with pytest.raises(BundleError, match="no command"):
        build_config(ContainerSpec(id=CID, image="x"), {}, rootfs, rootfs, "shoal")


def test_linux_section(rootfs: Path) -> None:
    spec = ContainerSpec(id=CID, image="x", command=["sh"], netns="/run/netns/n1", memory_bytes=64 << 20,
                         nano_cpus=1_500_000_000, pids_limit=50, hostname="web1")
    cfg = build_config(spec, {}, rootfs, rootfs, "shoal-lab/h1")
    lx = cfg["linux"]
    assert lx["cgroupsPath"] == f"/shoal-lab/h1/{CID}"
    assert {"type": "network", "path": "/run/netns/n1"} in lx["namespaces"]
    assert {n["type"] for n in lx["namespaces"]} == {"pid", "ipc", "uts", "mount", "network"}
    assert lx["resources"]["memory"]["limit"] == 64 << 20
    assert lx["resources"]["cpu"] == {"quota": 150000, "period": 100000}
    assert lx["resources"]["pids"] == {"limit": 50}
    assert "/proc/kcore" in lx["maskedPaths"] and "/proc/sys" in lx["readonlyPaths"]
    assert cfg["hostname"] == "web1" and cfg["process"]["noNewPrivileges"] is True
    dests = [m["destination"] for m in cfg["mounts"]]
    for d in ("/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/etc/hosts", "/etc/resolv.conf",
              "/etc/hostname"):
        assert d in dests
    sys_mount = next(m for m in cfg["mounts"] if m["destination"] == "/sys")
    assert "ro" in sys_mount["options"]
    with pytest.raises(BundleError, match="too small"):
        build_config(ContainerSpec(id=CID, image="x", command=["sh"], memory_bytes=1000), {}, rootfs, rootfs, "s")


def test_users(rootfs: Path) -> None:
    assert resolve_user(None, rootfs) == (0, 0, [])
    assert resolve_user("1234", rootfs) == (1234, 0, [])
    assert resolve_user("1234:99", rootfs) == (1234, 99, [])
    assert resolve_user("web:root", rootfs) == (33, 0, [])
    with pytest.raises(BundleError, match="unable to find user nobody"):
        resolve_user("nobody", rootfs)
    with pytest.raises(BundleError, match="unable to find group nope"):
        resolve_user("web:nope", rootfs)


def test_env_and_hosts() -> None:
    env = merge_env(["A=1", "B=2"], ["B=3", "C="], "h")
    assert env[:2] == ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOSTNAME=h"]
    assert "B=3" in env and "C=" in env and "HOME=/root" in env
    with pytest.raises(BundleError):
        merge_env([], ["=x"], "h")
    text = hosts_file("abc", "10.0.0.2/24", [("db", "10.0.0.3"), ("10.0.0.4", "cache")])
    assert "10.0.0.2\tabc\n" in text and "10.0.0.3\tdb\n" in text and "10.0.0.4\tcache\n" in text
