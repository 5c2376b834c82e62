"""Flower runs checkpoint and resume like `baffle run`: an interrupted run continued with ``resume = true``
ends bit-identical to an uninterrupted one, and the run-dir rules of `baffle run --out/--resume` hold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("flwr")

from baffle.config import ConfigError  # noqa: E402
from baffle.flower import node as flower_node  # noqa: E402
from baffle.flower.inmemory import run_inmemory  # noqa: E402
from baffle.flower.strategy import BaffleStrategy  # noqa: E402
from baffle.records.rundir import RunDirError  # noqa: E402
from test_flower import result, tiny  # noqa: E402


class Crash(RuntimeError):
    """The ServerApp dies mid-run (what a killed `flwr run` leaves behind)."""


def crash_at(monkeypatch, server_round: int) -> None:
    real = BaffleStrategy.aggregate_train

    def dying(self, rnd, replies):
        if rnd == server_round:
            raise Crash(f"killed in round {rnd}")
        return real(self, rnd, replies)

    monkeypatch.setattr(BaffleStrategy, "aggregate_train", dying)


def rows(rc: dict) -> list[dict]:
    """metrics.jsonl without the wall-clock and downlink columns: the resumed run's first plan to each
    partition also carries its step count (``client-steps``, ~20 bytes), checked apart."""
    lines = (Path(rc["result-dir"]) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(ln).items() if "wall" not in k and not k.startswith("down_bytes")} for ln in lines]


SCHEDULE = {"num-server-rounds": 6, "run-eval-every": 1, "run-checkpoint-every": 2, "fraction-train": 2}


@pytest.mark.parametrize("extra", [{"transport": "weights"}, {"transport": "replay", "privacy-mode": "local", "privacy-clip": 0.05},
                                   {"transport": "auto"},
                                   {"transport": "replay", "run-method": "baffle_multistep", "federation-local-steps": 2}],
                         ids=["weights", "replay+dp", "auto", "replay+multistep"])
def test_interrupted_flower_run_resumes_bit_identical(tmp_path, monkeypatch, extra):
    nodes = 3  # 2 of 3 sampled per round: partitions take different numbers of steps
    full = tiny(tmp_path, "full", **SCHEDULE, **extra)
    run_inmemory(full, nodes)

    cut = tiny(tmp_path, "cut", **SCHEDULE, **extra)
    crash_at(monkeypatch, 4)  # rounds 1-3 done, checkpoint at 2, metrics row 3 past it
    with pytest.raises(Crash):
        run_inmemory(cut, nodes)
    monkeypatch.undo()
    out = Path(cut["result-dir"])
    assert [json.loads(ln)["round"] for ln in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert not (out / "result.json").exists()

    run_inmemory({**cut, "resume": True}, nodes)  # fresh node contexts, as after a restart
    a, b = result(full), result(cut)
    assert b["rounds_done"] == 6 and b["failures"] == 0
    assert b["weights_sha256"] == a["weights_sha256"], "the resumed Flower run diverged from the uninterrupted one"
    assert rows(cut) == rows(full)  # every other metric (accuracy, costs, upload bytes, epsilon) at every round
    more = b["down_bytes_per_msg"] * b["messages_down"] - a["down_bytes_per_msg"] * a["messages_down"]
    # one client-steps entry per partition, once; replay: a new node's replica also replays the rounds before
    # the checkpoint (K float32 + record framing per round), as a node joining late does
    per_node = 32 + (6 * (8 * 4 + 100) if extra["transport"] != "weights" else 0)
    assert 0 < more <= nodes * per_node
    assert (out / "checkpoint.pt").exists() and (out / "summary.json").exists()


def test_a_run_killed_while_writing_its_checkpoint_resumes_bit_identical(tmp_path, monkeypatch):
    """`flwr stop` or a kill can land while the ServerApp writes its run dir. Killed between writing the new
    checkpoint's temporary file and renaming it (round 4), the run dir holds the round-2 checkpoint, rows 3-4
    past it and the half-written temporary file: resume goes on from round 2, drops the debris and ends as
    the uninterrupted run."""
    from baffle.records import checkpoint as ckpt

    full = tiny(tmp_path, "full", **SCHEDULE)
    run_inmemory(full, 3)
    cut = tiny(tmp_path, "cut", **SCHEDULE)
    real, saves = ckpt.atomic_write_bytes, {"n": 0}

    def killed_mid_write(path, data, mode=0o644):
        path = Path(path)
        if path.name == "checkpoint.pt":
            saves["n"] += 1
            if saves["n"] == 2:  # the round-4 checkpoint: half its bytes in the temporary file, then death
                (path.parent / f".{path.name}.tmp-99999").write_bytes(data[: len(data) // 2])
                raise Crash("killed while writing checkpoint.pt")
        return real(path, data, mode)

    monkeypatch.setattr(ckpt, "atomic_write_bytes", killed_mid_write)
    with pytest.raises(Crash):
        run_inmemory(cut, 3)
    monkeypatch.undo()
    out = Path(cut["result-dir"])
    assert [json.loads(ln)["round"] for ln in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    assert list(out.glob(".checkpoint.pt.tmp-*"))
    run_inmemory({**cut, "resume": True}, 3)
    assert result(cut)["weights_sha256"] == result(full)["weights_sha256"] and rows(cut) == rows(full)
    assert not list(out.glob(".*.tmp-*"))


def test_resume_without_node_catch_up_would_diverge(tmp_path, monkeypatch):
    """The control: a resumed node that restarted its sampler from batch 0 gives other weights, so the test
    above compares something that can differ."""
    full = tiny(tmp_path, "full", **SCHEDULE)
    run_inmemory(full, 3)
    cut = tiny(tmp_path, "cut", **SCHEDULE)
    crash_at(monkeypatch, 4)
    with pytest.raises(Crash):
        run_inmemory(cut, 3)
    monkeypatch.undo()
    monkeypatch.setattr(flower_node.Node, "_catch_up", lambda self, steps: None)
    run_inmemory({**cut, "resume": True}, 3)
    assert result(cut)["rounds_done"] == 6 and result(cut)["weights_sha256"] != result(full)["weights_sha256"]


def test_n_rounds_then_continued_to_2n_equals_2n(tmp_path):
    """`num-server-rounds` may grow on resume (as `baffle run --resume --set run.rounds=...`); with a schedule
    that does not depend on the run length the result equals a run of the full length."""
    const = {"optim-cosine": False, "run-eval-every": 1, "fraction-train": 2}
    full = tiny(tmp_path, "full", **const, **{"num-server-rounds": 6})
    run_inmemory(full, 3)
    half = tiny(tmp_path, "half", **const, **{"num-server-rounds": 3})
    run_inmemory(half, 3)
    assert result(half)["rounds_done"] == 3
    run_inmemory({**half, "num-server-rounds": 6, "resume": True}, 3)
    assert result(half)["rounds_done"] == 6 and result(half)["weights_sha256"] == result(full)["weights_sha256"]
    assert rows(half) == rows(full)


def test_a_resumed_runs_wall_time_counts_every_segment(tmp_path):
    """result.json's wall_s of a resumed run is the whole run's ServerApp time, as summary.json's and the
    metrics rows' (it used to count only the last ServerApp's, so a run resumed near its end looked fast)."""
    rc = tiny(tmp_path, "run", **{"run-eval-every": 1})
    run_inmemory(rc, 2)
    first = result(rc)["wall_s"]
    run_inmemory({**rc, "num-server-rounds": 5, "resume": True}, 2)
    summary = json.loads((Path(rc["result-dir"]) / "summary.json").read_text())
    wall = result(rc)["wall_s"]
    assert wall >= summary["wall_s"] - 0.01 and wall > first, (first, wall, summary["wall_s"])


def test_flower_run_dir_rules(tmp_path):
    rc = tiny(tmp_path, "run")
    run_inmemory(rc, 2)
    with pytest.raises(RunDirError, match=r"already holds a run .*resume=true.*overwrite=true"):
        run_inmemory(rc, 2)  # a new run never mixes into an old one
    run_inmemory({**rc, "overwrite": True}, 2)
    assert result(rc)["rounds_done"] == 3
    with pytest.raises(RunDirError, match=r"estimator.K: 8 in the checkpoint, 9 now"):
        run_inmemory({**rc, "resume": True, "estimator-k": 9}, 2)
    with pytest.raises(RunDirError, match=r"data.num_clients: 2 in the checkpoint, 3 now"):
        run_inmemory({**rc, "resume": True}, 3)
    with pytest.raises(RunDirError, match="no such directory"):
        run_inmemory({**rc, "resume": True, "result-dir": str(tmp_path / "nowhere")}, 2)
    with pytest.raises(ConfigError, match="resume=true needs result-dir"):
        run_inmemory({**rc, "resume": True, "result-dir": ""}, 2)
    with pytest.raises(ConfigError, match="secure=true"):
        run_inmemory({**rc, "resume": True, "secure": True, "num-server-rounds": 4}, 2)
    run_inmemory({**rc, "resume": True}, 2)  # already at its last round: nothing to train, same result
    assert result(rc)["rounds_done"] == 3


def test_a_restarted_node_taking_its_partition_over_continues_its_batches(tmp_path, monkeypatch):
    """A node that restarts mid-run (new node id, empty node state) is told its partition's step count and
    re-draws its minibatches: the run ends bit-identical to one without the restart; without the catch-up
    it would not."""
    from flwr.app import Context, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from baffle.flower.client_app import app as client_app
    from baffle.flower.inmemory import SERVER_NODE_ID, InMemoryGrid
    from baffle.flower.server_app import main

    class RestartingGrid(InMemoryGrid):
        """The node of partition 1 restarts after round 2: a new node id and a fresh Context."""

        done = 0
        restarted = False

        def push_messages(self, messages):
            msgs = list(messages)
            self.done = max([self.done] + [int(m.metadata.group_id) for m in msgs if m.metadata.message_type == "train"])
            return super().push_messages(msgs)

        def get_node_ids(self):
            if self.done == 2 and not self.restarted:
                old = next(n for n, c in self.contexts.items() if int(c.node_config["partition-id"]) == 1)
                ctx = self.contexts.pop(old)
                self.contexts[2001] = Context(ctx.run_id, 2001, dict(ctx.node_config), RecordDict(), dict(ctx.run_config))
                self.restarted = True
            return list(self.contexts)

    def run(rc: dict, restart: bool) -> str:
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, SERVER_NODE_ID, 1
        configs = [{"partition-id": i, "num-partitions": 3} for i in range(3)]
        grid = (RestartingGrid if restart else InMemoryGrid)(client_app, configs, rc)
        main(grid, Context(7, SERVER_NODE_ID, {}, RecordDict(), dict(rc)))
        assert not restart or grid.restarted
        return result(rc)["weights_sha256"]

    sched = {"num-server-rounds": 5, "run-eval-every": 5}
    plain = run(tiny(tmp_path, "plain", **sched), restart=False)
    assert run(tiny(tmp_path, "restart", **sched), restart=True) == plain
    monkeypatch.setattr(flower_node.Node, "_catch_up", lambda self, steps: None)
    assert run(tiny(tmp_path, "no-catch-up", **sched), restart=True) != plain


def test_resuming_a_checkpoint_from_before_bytes_down_rebuilds_them(tmp_path, monkeypatch):
    """A Flower checkpoint written before bytes down were counted has no ``download_bytes``: the resumed run
    rebuilds them from the train messages it had sent, so its rows equal an uninterrupted run's."""
    from baffle.records import checkpoint

    nodes = 3
    full = tiny(tmp_path, "full", **SCHEDULE)
    run_inmemory(full, nodes)
    cut = tiny(tmp_path, "cut", **SCHEDULE)
    crash_at(monkeypatch, 4)
    with pytest.raises(Crash):
        run_inmemory(cut, nodes)
    monkeypatch.undo()
    path = Path(cut["result-dir"]) / "checkpoint.pt"
    state = checkpoint.load(path)
    del state["counters"]["download_bytes"]  # what a checkpoint of an older baffle holds
    checkpoint.save(path, state)
    run_inmemory({**cut, "resume": True}, nodes)
    assert rows(cut) == rows(full) and rows(cut)[-1]["total_download_bytes"] > 0
