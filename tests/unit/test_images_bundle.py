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


# ---- ContainerSpec security and limit fields (cap_add/drop, ulimits, sysctls, groups, dns, oom) ----

def test_capabilities_add_and_drop(rootfs: Path) -> None:
    from agent_runtime.bundle import DEFAULT_CAPS

    cfg = build_config(ContainerSpec(id=CID, image="x", command=["sh"], cap_add=["net_admin", "CAP_SYS_TIME"],
                                     cap_drop=["CHOWN"]), {}, rootfs, rootfs, "shoal")
    caps = cfg["process"]["capabilities"]
    assert caps["bounding"] == caps["effective"] == caps["permitted"]
    assert cap_mask(caps["effective"]) == (DEFAULT_CAP_MASK & ~(1 << 0)) | (1 << 12) | (1 << 25)
    only = build_config(ContainerSpec(id=CID, image="x", command=["sh"], cap_add=["NET_RAW"], cap_drop=["ALL"]),
                        {}, rootfs, rootfs, "shoal")
    assert only["process"]["capabilities"]["effective"] == ["CAP_NET_RAW"]
    every = build_config(ContainerSpec(id=CID, image="x", command=["sh"], cap_add=["ALL"], cap_drop=["MKNOD"]),
                         {}, rootfs, rootfs, "shoal")["process"]["capabilities"]["effective"]
    assert "CAP_SYS_ADMIN" in every and "CAP_MKNOD" not in every and set(DEFAULT_CAPS) - {"CAP_MKNOD"} <= set(every)
    with pytest.raises(BundleError, match="unknown capability"):
        build_config(ContainerSpec(id=CID, image="x", command=["sh"], cap_add=["FLY"]), {}, rootfs, rootfs, "s")


def test_ulimits_override_the_default_nofile(rootfs: Path) -> None:
    cfg = build_config(ContainerSpec(id=CID, image="x", command=["sh"], ulimits=[
        {"name": "nofile", "soft": 1234, "hard": 2345}, {"name": "nproc", "soft": 50, "hard": -1}]),
        {}, rootfs, rootfs, "shoal")
    assert cfg["process"]["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 2345, "soft": 1234},
                                         {"type": "RLIMIT_NPROC", "hard": 2**64 - 1, "soft": 50}]
    with pytest.raises(BundleError, match="soft limit 9 is greater than hard limit 3"):
        build_config(ContainerSpec(id=CID, image="x", command=["sh"], ulimits=[{"name": "core", "soft": 9, "hard": 3}]),
                     {}, rootfs, rootfs, "shoal")
    with pytest.raises(BundleError, match="invalid ulimit type"):
        build_config(ContainerSpec(id=CID, image="x", command=["sh"], ulimits=[{"name": "fds", "soft": 1, "hard": 1}]),
                     {}, rootfs, rootfs, "shoal")


def test_sysctls_groups_and_oom_score_adj(rootfs: Path) -> None:
    cfg = build_config(ContainerSpec(id=CID, image="x", command=["sh"], user="web", groups=["log", "1234", "web"],
                                     sysctls={"net.ipv4.ip_forward": "1"}, oom_score_adj=-250),
                       {}, rootfs, rootfs, "shoal")
    assert cfg["linux"]["sysctl"] == {"net.ipv4.ip_forward": "1"}
    assert cfg["process"]["user"] == {"uid": 33, "gid": 33, "additionalGids": [4, 1234, 33]}
    assert cfg["process"]["oomScoreAdj"] == -250
    plain = build_config(ContainerSpec(id=CID, image="x", command=["sh"]), {}, rootfs, rootfs, "shoal")
    assert "sysctl" not in plain["linux"] and "oomScoreAdj" not in plain["process"]
    with pytest.raises(BundleError, match="unable to find group nogroup"):
        build_config(ContainerSpec(id=CID, image="x", command=["sh"], groups=["nogroup"]), {}, rootfs, rootfs, "s")
    with pytest.raises(BundleError, match="sysctl 'kernel.hostname' is not allowed"):
        build_config(ContainerSpec(id=CID, image="x", command=["sh"], sysctls={"kernel.hostname": "x"}),
                     {}, rootfs, rootfs, "s")
    with pytest.raises(BundleError, match="between -1000 and 1000"):
        build_config(ContainerSpec(id=CID, image="x", command=["sh"], oom_score_adj=2000), {}, rootfs, rootfs, "s")


def test_resolv_conf_from_dns_config(rootfs: Path, tmp_path: Path) -> None:
    from agent_runtime.bundle import resolv_conf_text

    host = "nameserver 127.0.0.53\nnameserver 192.0.2.1\nsearch corp.example\noptions edns0\n"
    assert resolv_conf_text(["10.0.0.53"], ["a.example", "b.example"], ["ndots:2"], host) == (
        "nameserver 10.0.0.53\nsearch a.example b.example\noptions ndots:2\n")
    assert resolv_conf_text([], ["a.example"], [], host) == (
        "nameserver 192.0.2.1\noptions edns0\nsearch a.example\n")
    assert resolv_conf_text([], ["."], [], host) == "nameserver 192.0.2.1\noptions edns0\n"


def test_extra_hosts_both_docker_forms() -> None:
    from shoal.base.containerrules import parse_extra_host

    pairs = parse_extra_host("10.0.0.9 db db.local") + parse_extra_host("cache:10.0.0.10")
    assert pairs == [("db", "10.0.0.9"), ("db.local", "10.0.0.9"), ("cache", "10.0.0.10")]
    assert parse_extra_host("v6:fd00::1") == [("v6", "fd00::1")]
    text = hosts_file("h", None, pairs)
    assert "10.0.0.9\tdb\n" in text and "10.0.0.9\tdb.local\n" in text and "10.0.0.10\tcache\n" in text
    with pytest.raises(ValueError, match="not an IP address"):
        parse_extra_host("db:nope")


def test_spec_round_trips_new_fields() -> None:
    s = ContainerSpec(id=CID, image="x", cap_add=["NET_ADMIN"], cap_drop=["CHOWN"],
                      ulimits=[{"name": "nofile", "soft": 1, "hard": 2}], sysctls={"net.core.somaxconn": "512"},
                      groups=["1"], dns_search=["a"], dns_options=["ndots:1"], oom_score_adj=5)
    assert ContainerSpec.from_dict(s.to_dict()) == s
