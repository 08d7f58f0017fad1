"""The worker carries a service's json-file options (TaskTemplate.LogDriver) into the container spec, and
refuses a task whose LogDriver it cannot apply (a manager that let it through: an older or hostile one)."""

from __future__ import annotations

from tests.unit.test_executor_states import NODE, Env, make_task
from tests.waiting import wait_until as until
from worker.executor import container_id_for


async def test_log_options_reach_the_container_spec() -> None:
    e = Env()
    t = make_task("t1")
    t["Spec"]["LogDriver"] = {"Name": "json-file", "Options": {"max-size": "64k", "max-file": "2"}}
    plain = make_task("t2")
    plain["NetworksAttachments"][0]["Addresses"] = ["10.200.1.8/24"]
    await e.ex.set_assignments(NODE, [t, plain])
    await until(lambda: e.states("t1")[-1:] == ["running"] and e.states("t2")[-1:] == ["running"])
    assert e.runtime.specs[container_id_for("t1")].log_opts == {"max-size": "64k", "max-file": "2"}
    assert e.runtime.specs[container_id_for("t2")].log_opts == {}  # the daemon's defaults apply
    await e.ex.close()


async def test_a_log_driver_the_node_cannot_apply_rejects_the_task() -> None:
    e = Env()
    bad = [make_task(f"t{i}") for i in range(3)]
    bad[0]["Spec"]["LogDriver"] = {"Name": "fluentd"}
    bad[1]["LogDriver"] = {"Name": "json-file", "Options": {"max-size": "-1"}}  # swarmkit's Task.LogDriver
    bad[2]["Spec"]["LogDriver"] = "json-file"
    for i, t in enumerate(bad):
        t["NetworksAttachments"][0]["Addresses"] = [f"10.200.1.{10 + i}/24"]
    await e.ex.set_assignments(NODE, bad)
    await until(lambda: all(e.states(f"t{i}")[-1:] == ["rejected"] for i in range(3)))
    assert "log driver 'fluentd' is not supported by shoal" in e.last("t0")["Err"]
    assert "invalid size '-1'" in e.last("t1")["Err"]
    assert "task LogDriver must be an object" in e.last("t2")["Err"]
    assert not e.runtime.specs
    await e.ex.close()
