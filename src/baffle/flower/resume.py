"""Run directories of Flower runs: the rules and checkpoint of ``baffle run --out/--resume/--overwrite``.

A Flower run writes the run dir ``result-dir`` (config.toml, metrics.jsonl, summary.json, curves.png,
checkpoint.pt, result.json). The same rules as ``baffle run`` (``baffle.records.rundir``) apply, spelled
as run-config keys: ``result-dir=DIR`` starts a new run and refuses a directory that holds one;
``overwrite=true`` deletes that run first; ``resume=true`` continues it from its checkpoint (a BAFFLE02
file, ``baffle.records.checkpoint``: SHA-256 and HMAC with the run's key) and never deletes history. The
resumed run config must equal the checkpoint's except for ``rundir.SAFE_RESUME_CHANGES``
(``num-server-rounds``, ``run-eval-every``, ``run-checkpoint-every``, ``run-threads``).

What a Flower checkpoint holds beyond ``baffle run``'s server state (key ``flower``): the aggregated
K-vector of every round (nodes that join replay them in ``transport = "replay"``), how many ``Client.step``
calls each partition's node has made (a resumed node starts with empty Flower node state; the server tells
it this count and it re-draws its minibatches up to there, see ``baffle.flower.node``), the byte counters
and the privacy ledger. It has no per-client sampler state (``clients``), so ``baffle run --resume`` does
not take a Flower run dir, nor ``resume=true`` a ``baffle run`` dir.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from baffle.config import Config, ConfigError
from baffle.records import checkpoint
from baffle.records.rundir import CHECKPOINT_NAME, RunDirError, check_resume_config, metrics_rounds, prepare_fresh

FLOWER_KEY = "flower"
KEYS = ("round", "server", "counters", "config", FLOWER_KEY)


def _flower_words(e: Exception) -> RunDirError:
    """The rundir message in the Flower app's own key names (its options are run-config keys, not flags)."""
    msg = str(e).replace("--resume with --set", "resume=true with a change of").replace("--resume ", "resume=true, result-dir=")
    msg = msg.replace("--overwrite ", "overwrite=true, result-dir=").replace("--overwrite", "overwrite=true")
    msg = msg.replace("--out ", "result-dir=").replace("another --out", "another result-dir")
    return RunDirError(msg)


def prepare_out(result_dir: str, resume: bool, overwrite: bool) -> Path | None:
    """Check ``result-dir`` before any work starts (a new run: empty or absent, or ``overwrite``; a resumed
    run: an existing directory). Returns it, or None when the run writes nothing."""
    if not result_dir:
        return None
    out = Path(result_dir)
    if resume:
        if not out.is_dir():
            raise RunDirError(f"resume=true, result-dir={out}: {'no such directory' if not out.exists() else 'not a directory'}; "
                              "start a new run with resume=false")
        return out
    try:
        return prepare_fresh(out, overwrite)
    except RunDirError as e:
        raise _flower_words(e) from None


def load_for_resume(out: Path, cfg: Config) -> dict[str, Any] | None:
    """The checkpoint to continue from, checked against ``cfg`` (the resolved run config, with the number
    of partitions already known); None when the run may start over (killed before its first checkpoint)."""
    ckpt = out / CHECKPOINT_NAME
    if ckpt.exists() or ckpt.is_symlink():
        state = checkpoint.load(ckpt)  # verifies SHA-256 and the run key's HMAC
        missing = [k for k in KEYS if k not in state]
        if missing:
            hint = "; a `baffle run` directory resumes with `baffle run --resume`" if "clients" in state else ""
            raise RunDirError(f"{ckpt} is not a Flower run checkpoint (no {', '.join(missing)}){hint}")
        round_done = state["round"]
        if not isinstance(round_done, int) or round_done < 0:
            raise RunDirError(f"{ckpt} has no valid round number")
        try:
            check_resume_config(state["config"], cfg, round_done, ckpt)
        except RunDirError as e:
            raise _flower_words(e) from None
        return state
    if (out / "summary.json").exists():
        raise RunDirError(f"resume=true, result-dir={out}: the run finished but {ckpt} is missing; refusing to retrain over its history")
    rounds, every = metrics_rounds(out), cfg.run.checkpoint_every
    if rounds and not every:
        raise RunDirError(f"resume=true, result-dir={out}: run-checkpoint-every=0, so this run has no checkpoint to resume; "
                          "its metrics.jsonl would be lost by a restart (start a new run in another result-dir)")
    first = min(every, cfg.run.rounds) if every else 0
    if rounds and max(rounds) > first:
        raise RunDirError(f"resume=true, result-dir={out}: {ckpt} is missing but metrics.jsonl reaches round {max(rounds)} "
                          f"(the first checkpoint is written at round {first}); refusing to restart from round 0 over this history")
    return None


def pack_history(history: dict[int, np.ndarray | None], rounds: int, k: int) -> dict[str, Any]:
    """The per-round aggregated K-vectors as one float32 [rounds, K] array plus the skipped rounds."""
    arr = np.zeros((rounds, k), dtype=np.float32)
    skipped = []
    for r in range(rounds):
        vec = history.get(r)
        if vec is None:
            skipped.append(r)
        else:
            arr[r] = vec
    return {"vectors": arr, "skipped": skipped}


def unpack_history(packed: dict[str, Any], rounds: int, k: int) -> dict[int, np.ndarray | None]:
    arr = np.asarray(packed["vectors"], dtype=np.float32)
    if arr.shape != (rounds, k):
        raise ConfigError(f"checkpoint history has shape {arr.shape}, expected ({rounds}, {k})")
    skipped = {int(r) for r in packed["skipped"]}
    return {r: None if r in skipped else arr[r].copy() for r in range(rounds)}
