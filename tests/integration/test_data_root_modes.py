"""Another local user cannot reach what images bring onto the host (root, one host; issue 7).

An image's setuid binary lies in its unpacked layer and in every container's rootfs. With the data
root, the image store and the containers' directories 0700, user nobody can neither stat nor exec
it there (EACCES), while a container running as a non-root user still starts and reads its rootfs.
"""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
from pathlib import Path

import pytest

from agent_runtime.containers import ContainerSpec, Runtime
from agent_runtime.images import ImageStore
from agent_runtime.oci.cgroups import Cgroup
from shoal.base.util import new_container_id
from shoal.daemon.state import secure_data_root
from tests.integration.conftest import BUSYBOX, TEST_REF, require_root

pytestmark = pytest.mark.root

AS_NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]


async def test_setuid_file_in_layers_and_rootfs_is_out_of_reach(scratch_dir: Path, busybox_archive: Path) -> None:
    require_root()
    data = scratch_dir / "data"
    secure_data_root(data)
    images = ImageStore(data / "images")
    images.load(busybox_archive)
    img = images.get(TEST_REF)
    assert img is not None
    suid = img.layers[0] / "bin/busybox"
    os.chmod(suid, 0o4755)  # as an image's setuid binary is unpacked
    parent = f"shoal-test-modes-{os.getpid()}-{os.urandom(3).hex()}"
    rt = Runtime(data / "containers", scratch_dir / "exec", images, parent, "shoal")
    cid = new_container_id()
    try:
        await rt.create(ContainerSpec(id=cid, image=TEST_REF, user="1000",
                                      command=["sh", "-c", "id -u; head -c6 /www/index.html; grep -c localhost "
                                                           "/etc/hosts; ls -l /bin/busybox | cut -c1-10"]))
        await rt.start(cid)
        assert await asyncio.wait_for(rt.wait(cid), 30) == 0, rt.read_logs(cid)
        out = "".join(r["log"] for r in rt.read_logs(cid) if r["stream"] == "stdout").split("\n")
        assert out == ["1000", "<html>2", "-rwsr-xr-x", ""], out  # a non-root container still reads its rootfs
        in_rootfs = data / "containers" / cid / "rootfs/bin/busybox"
        for path in (suid, in_rootfs):
            assert os.stat(path).st_mode & stat.S_ISUID  # root sees it
            st = subprocess.run(AS_NOBODY + [BUSYBOX, "stat", "-c", "%A", str(path)], capture_output=True, text=True)
            assert st.returncode != 0 and "Permission denied" in st.stderr, (path, st)
            # exec from a shell that already runs as nobody (setpriv's own exec still holds root's capabilities)
            ex = subprocess.run(AS_NOBODY + [BUSYBOX, "sh", "-c", f"exec {path} true"], capture_output=True, text=True)
            assert ex.returncode == 126 and "Permission denied" in ex.stderr, (path, ex)
        for d in (data, data / "images", data / "images/layers", data / "containers", data / "containers" / cid,
                  scratch_dir / "exec/shoal-oci"):
            assert stat.S_IMODE(os.stat(d).st_mode) == 0o700, d
    finally:
        for s in rt.list():
            await rt.remove(s.id)
        Cgroup("/" + parent).destroy()
