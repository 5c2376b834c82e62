"""Run directories that never mix: what ``baffle run --out/--resume/--overwrite`` may do to a directory.

A run directory holds one run's history (config.toml, metrics.jsonl, checkpoint.pt, its key, summary.json,
curves.png). Mixing two runs in one directory, or restarting one from round 0 over its own history, produces
results that look valid and are not. The rules, checked before any work starts:

* ``--out DIR`` (a new run): DIR may be absent, or an empty directory (temporary files of a writer killed
  before it wrote anything do not count). A directory that holds a run is refused unless ``--overwrite``,
  which deletes that run's files, and only those: a directory holding anything baffle did not write is never
  cleared. A regular file is refused.
* ``--resume DIR`` continues from DIR's checkpoint and never deletes history. Without a checkpoint it starts
  over only when nothing could have been checkpointed yet (no summary, no evaluation past the first
  checkpoint round); otherwise it is an error. The config in DIR/config.toml (plus ``--set`` overrides)
  must equal the resolved config stored in the checkpoint, except for the keys in :data:`SAFE_RESUME_CHANGES`.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from baffle.config import Config, ConfigError
from baffle.records import checkpoint

CHECKPOINT_NAME = "checkpoint.pt"
# result.json: the Flower app's totals (baffle.flower), written into the same run dir
RUN_FILES = ("config.toml", "metrics.jsonl", "summary.json", "curves.png", CHECKPOINT_NAME, checkpoint.KEY_NAME, "error.txt",
             "result.json")
MARKERS = ("config.toml", "metrics.jsonl", "summary.json", CHECKPOINT_NAME)  # any of these: the dir holds a run

# Config keys a resumed run may change, and why that is safe. Everything else must match the checkpoint.
SAFE_RESUME_CHANGES: dict[str, str] = {
    "run.rounds": "train longer (or stop earlier, not before the checkpoint's round); with optim.cosine the decay "
    "is recomputed for the new length from the resumed round on",
    "run.eval_every": "when evaluations happen; the model is not touched",
    "run.checkpoint_every": "when checkpoints are written",
    "run.threads": "torch intra-op threads",
    "estimator.feature_cache_mb": "the cache of a frozen bottom's output: each sample's computed once (the batched "
    "engine's the same values; a prefix cache's row store differs from a batched bottom in float32's last bits)",
}


# Keys added to baffle after runs had been made, whose default later moved away from what those runs used: a run
# directory (config.toml or checkpoint) without the key ran with this value, not with today's default. Without it,
# resuming a run made before estimator.noise existed would switch it from v1 to v2-gauss in mid-run.
KEYS_ADDED_LATER: dict[str, Any] = {"estimator.noise": "v1"}


def load_run_config(path: Path) -> Config:
    """A run directory's config.toml, with the value every key of :data:`KEYS_ADDED_LATER` had before it existed."""
    cfg = Config.load(path)
    stored = _flat(tomllib.loads(path.read_text()))
    for key, value in KEYS_ADDED_LATER.items():
        if key not in stored:
            cfg.set(key, value)
    return cfg


class RunDirError(ConfigError):
    """A run directory that cannot be used as asked; the message names it and says what would work."""


def _debris(p: Path) -> bool:
    return p.is_file() and p.name.startswith(".") and ".tmp-" in p.name


def _entries(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if not _debris(p))


def holds_run(out: Path) -> bool:
    return out.is_dir() and any((out / m).exists() for m in MARKERS)


def prepare_fresh(out: str | Path, overwrite: bool = False) -> Path:
    """Check (and with ``overwrite`` clear) ``out`` for a new run; returns it. Creates nothing."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out}: exists and is not a directory; choose a new directory")
    if not out.exists():
        if out.parent.exists() and not out.parent.is_dir():
            raise RunDirError(f"--out {out}: {out.parent} is not a directory")
        return out
    try:
        entries = _entries(out)
    except OSError as e:
        raise RunDirError(f"--out {out}: cannot list it ({e.strerror})") from None
    if not entries:
        return out
    names = [p.name for p in entries]
    foreign = [n for n, p in zip(names, entries) if n not in RUN_FILES or not p.is_file()]
    if not holds_run(out):
        raise RunDirError(f"--out {out}: exists and is not empty ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''}); "
                          "choose a new or empty directory")
    if not overwrite:
        raise RunDirError(
            f"--out {out}: already holds a run ({', '.join(n for n in names if n in RUN_FILES)}); continue it with "
            f"--resume {out}, choose another --out, or pass --overwrite to delete it first"
        )
    if foreign:
        raise RunDirError(f"--overwrite {out}: it also holds files baffle did not write ({', '.join(foreign[:5])}); not deleting anything")
    for p in out.iterdir():
        if p.name in RUN_FILES or _debris(p):
            p.unlink()
    return out


def metrics_rounds(out: Path) -> list[int]:
    """The rounds a run dir's metrics.jsonl has rows for (unreadable lines skipped): what a resume must keep."""
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    rounds = []
    for ln in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(ln)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("round"), int):
            rounds.append(row["round"])
    return rounds


_ABSENT = object()


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = json.loads(json.dumps(v))  # tuples -> lists, the form both sides compare in
    return out


def config_changes(saved: dict, cfg: Config) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> (value in the checkpoint, value now) for every key that differs."""
    a, b, default = _flat(saved), _flat(cfg.to_dict()), _flat(Config().to_dict())
    changes = {}
    for k in sorted(set(a) | set(b)):
        was, now = a.get(k, KEYS_ADDED_LATER.get(k, _ABSENT)), b.get(k, _ABSENT)
        if was is _ABSENT and k in default and now == default[k]:
            continue  # a key added to baffle after the checkpoint was written, left at its default
        if was != now:
            changes[k] = (was, now)
    return changes


def check_resume_config(saved: Any, cfg: Config, round_done: int, where: Path) -> None:
    """Refuse a resumed config that differs from the checkpoint's, except by :data:`SAFE_RESUME_CHANGES`."""
    if not isinstance(saved, dict):
        raise RunDirError(f"{where} holds no resolved config; it cannot be checked against {where.parent / 'config.toml'}")
    changes = config_changes(saved, cfg)
    unsafe = {k: v for k, v in changes.items() if k not in SAFE_RESUME_CHANGES}
    if unsafe:
        shown = "; ".join(f"{k}: {_show(a)} in the checkpoint, {_show(b)} now" for k, (a, b) in list(unsafe.items())[:6])
        more = f" (+{len(unsafe) - 6} more)" if len(unsafe) > 6 else ""
        raise RunDirError(
            f"--resume {where.parent}: the config differs from the one the checkpoint was trained with ({shown}{more}); "
            f"only {', '.join(SAFE_RESUME_CHANGES)} may change on resume: restore the config or start a new run"
        )
    if cfg.run.rounds < round_done:
        raise RunDirError(f"--resume {where.parent}: run.rounds={cfg.run.rounds} is before the checkpoint's round {round_done}")


def _show(v: Any) -> str:
    return "(absent)" if v is _ABSENT else repr(v)


@dataclass
class Resume:
    """What ``--resume`` found: the config to run, and whether a checkpoint will be loaded."""

    cfg: Config
    has_checkpoint: bool
    round_done: int


def prepare_resume(out: str | Path, overrides: list[str] | None = None) -> Resume:
    """The config of the run in ``out`` (its config.toml plus ``overrides`` of safe keys), checked against the
    checkpoint; refuses anything that would mix runs or delete history."""
    out = Path(out)
    if not out.is_dir():
        raise RunDirError(f"--resume {out}: {'no such directory' if not out.exists() else 'not a directory'}")
    if not (out / "config.toml").is_file():
        raise RunDirError(f"--resume {out}: no config.toml there; is it a baffle run directory?")
    cfg = load_run_config(out / "config.toml")
    for item in overrides or []:
        key = item.split("=", 1)[0].strip()
        if key not in SAFE_RESUME_CHANGES:
            raise RunDirError(f"--resume with --set {key}: only {', '.join(SAFE_RESUME_CHANGES)} may change when resuming")
    cfg.apply_overrides(overrides or [])
    ckpt = out / CHECKPOINT_NAME
    if ckpt.exists() or ckpt.is_symlink():
        state = checkpoint.load(ckpt)  # verifies SHA-256 and HMAC; refuses a directory or a foreign file
        missing = [k for k in ("round", "server", "clients", "counters", "config") if k not in state]
        if missing:
            raise RunDirError(f"{ckpt} is not a run checkpoint of this baffle (no {', '.join(missing)})")
        round_done = state.get("round")
        if not isinstance(round_done, int) or round_done < 0:
            raise RunDirError(f"{ckpt} has no valid round number")
        check_resume_config(state.get("config"), cfg, round_done, ckpt)
        return Resume(cfg, True, round_done)
    if (out / "summary.json").exists():
        raise RunDirError(f"--resume {out}: the run finished but {ckpt} is missing; refusing to retrain over its history")
    rounds = metrics_rounds(out)
    every = cfg.run.checkpoint_every
    if rounds and not every:
        raise RunDirError(
            f"--resume {out}: run.checkpoint_every=0, so this run has no checkpoint to resume; its metrics.jsonl "
            "would be lost by a restart (start a new run with another --out)"
        )
    first = min(every, cfg.run.rounds) if every else 0
    if rounds and max(rounds) > first:
        raise RunDirError(
            f"--resume {out}: {ckpt} is missing but metrics.jsonl reaches round {max(rounds)} (the first checkpoint "
            f"is written at round {first}); refusing to restart from round 0 over this history"
        )
    return Resume(cfg, False, 0)



def claim_new(parent: str | Path, stamp: str) -> Path:
    """Create and return a new, empty run directory ``parent/stamp`` (``stamp-2``, ``-3``... if taken).

    ``mkdir`` fails when the name exists, so two runs started in the same second never share a directory."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    for i in range(1, 1000):
        out = parent / (stamp if i == 1 else f"{stamp}-{i}")
        try:
            out.mkdir()
            return out
        except FileExistsError:
            continue
    raise RunDirError(f"{parent}: cannot find a free run directory name for {stamp}; pass --out")
