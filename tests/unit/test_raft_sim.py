"""The deterministic cluster simulator (raft.sim): a quick sweep of seeds over 3- and 5-node
clusters with loss, duplication, reordering, partitions, crashes (with and without losing
unsynced writes), membership changes, transfers and snapshots — every step checked for election
safety, log matching, leader completeness and state machine safety (Raft paper §5.4, Figure 3),
and each run's client history checked for linearizability. The long soak is
``python -m raft.sim --seeds 1-200 --nodes 3,5``."""

from __future__ import annotations

import pytest

from raft.core import log as core_log
from raft.linearizability import check_history
from raft.sim import SafetyViolation, SimParams, Simulation, run
from raft.sim.__main__ import main as sim_main

SEEDS = range(1, 41)
STEPS = 2500


@pytest.mark.parametrize("nodes", [3, 5])
def test_quick_sweep_keeps_every_safety_property(nodes: int) -> None:
    totals: dict[str, int] = {}
    for seed in SEEDS:
        try:
            st = run(seed, nodes, STEPS)
        except SafetyViolation as e:  # pragma: no cover - the message holds the replay command
            pytest.fail(str(e))
        for k, v in st.items():
            totals[k] = totals.get(k, 0) + v
    # The sweep really exercised the faults it claims to.
    assert totals["elections"] > len(SEEDS)
    assert totals["crashes"] > 10 and totals["restarts"] > 10
    assert totals["conf_changes"] > 5 and totals["snapshots"] > 10 and totals["snap_installs"] > 0
    assert totals["transfers"] > 5 and totals["acked"] > 100 * len(SEEDS)


def test_a_seed_replays_exactly() -> None:
    a = Simulation(SimParams.from_seed(7, 3, 800))
    b = Simulation(SimParams.from_seed(7, 3, 800))
    assert a.run() == b.run()
    assert [(o.call, o.ret, o.kind, o.key, o.value, o.result) for o in a.history] == \
           [(o.call, o.ret, o.kind, o.key, o.value, o.result) for o in b.history]


def test_client_history_with_readindex_reads_is_linearizable() -> None:
    sim = Simulation(SimParams.from_seed(3, 5, 1500))
    sim.run()
    acked_writes = [o for o in sim.history if o.kind == "w" and o.ret is not None]
    reads = [o for o in sim.history if o.kind == "r" and o.ret is not None]
    assert len(acked_writes) > 50 and len(reads) > 50
    assert check_history(sim.history).ok
    # Every acknowledged write is there at the end: the final reads see the last value of each key.
    final = {o.key: o.result for o in reads if o.client >= 1000}
    assert len(final) == sim.p.keys


def test_the_checks_have_teeth_against_a_broken_election_restriction(monkeypatch: pytest.MonkeyPatch) -> None:
    # Break §5.4.1 (grant votes whatever the candidate's log): the simulator must notice.
    monkeypatch.setattr(core_log.RaftLog, "is_up_to_date", lambda self, i, t: True)
    for seed in range(1, 30):
        try:
            run(seed, 3, 1500)
        except SafetyViolation as e:
            assert "replay: python -m raft.sim --seed" in str(e)
            return
    pytest.fail("a broken election restriction went unnoticed in 29 seeds")


def test_cli_replays_a_seed(capsys: pytest.CaptureFixture[str]) -> None:
    assert sim_main(["--seed", "5", "--nodes", "3", "--steps", "300"]) == 0
    out = capsys.readouterr().out
    assert "ok   seed 5 nodes 3" in out and "1/1 runs passed" in out
