"""``baffle run``: the whole federated run with metrics, checkpoints, resume and a progress bar.

Per round: sample clients (a pure function of seed and round, so a resumed run samples the same ones),
let the method run its round body (``baffle.methods``), evaluate the EMA weights every ``eval_every``
rounds, checkpoint atomically every ``checkpoint_every`` rounds.
"""

from __future__ import annotations

import time
from pathlib import Path

from baffle.records import checkpoint
from baffle.client import load_weights
from baffle.config import Config
from baffle.records.metrics import (Counters, append_metrics, make_summary, metrics_row, privacy_metrics,
                                    read_metrics, truncate_metrics)
from baffle.sim.evaluate import HeadCache, evaluate, probe_loss
from baffle.sim.factory import build
from baffle.sim.rounds import RoundRunner
from baffle.sim.sampling import sample_clients

CHECKPOINT_NAME = "checkpoint.pt"


class Simulation:
    def __init__(self, cfg: Config, out_dir: str | Path | None, progress: bool = True):
        self.cfg = cfg
        self.out = Path(out_dir) if out_dir else None
        self.progress = progress
        self.fed = build(cfg)
        self.runner = RoundRunner(self.fed)
        self.start_round = 0
        # a head-only text run evaluates its frozen encoder's outputs once (exact: sim.evaluate.HeadCache)
        self.head_cache = HeadCache(self.fed.strategy.state_names)

    # ---- persistence --------------------------------------------------------------------------
    def checkpoint_state(self, round_done: int) -> dict:
        return {
            "round": round_done,
            "server": self.fed.strategy.state_dict(),
            "clients": [cl.state_dict() for cl in self.fed.clients],
            "counters": self.fed.counters.__dict__.copy(),
            "config": self.cfg.to_dict(),
        }

    def save_checkpoint(self, round_done: int) -> None:
        if self.out is not None:
            checkpoint.save(self.out / CHECKPOINT_NAME, self.checkpoint_state(round_done))

    def resume(self) -> None:
        assert self.out is not None
        state = checkpoint.load(self.out / CHECKPOINT_NAME)
        self.fed.strategy.load_state_dict(state["server"])
        if len(state["clients"]) != len(self.fed.clients):
            raise checkpoint.CheckpointError("checkpoint has a different number of clients than the config")
        for cl, st in zip(self.fed.clients, state["clients"]):
            cl.load_state_dict(st)
        counters = dict(state["counters"])
        if "download_bytes" not in counters:  # written before bytes down were counted: rebuild them (sampling is pure)
            counters["download_bytes"] = self.runner.plan_bytes * sum(
                len(sample_clients(self.cfg, r)) for r in range(state["round"]))
        self.fed.counters = Counters(**counters)
        self.start_round = state["round"]
        self._replay_ledger()
        truncate_metrics(self.out, self.start_round)

    def _replay_ledger(self) -> None:
        """Rebuild the privacy ledger of the rounds already done (answering sets are pure functions)."""
        ledger = self.runner.ledger
        if ledger is None:
            return
        for r in range(self.start_round):
            ledger.record(self.runner.availability(sample_clients(self.cfg, r), r).answered)

    def resume_or_start(self) -> bool:
        """``--resume``: continue from the checkpoint; a run killed before its first checkpoint starts over.

        Returns True when a checkpoint was loaded. A checkpoint that exists but is truncated or corrupted
        raises CheckpointError naming the file: it is never silently replaced."""
        assert self.out is not None
        if (self.out / CHECKPOINT_NAME).exists():
            self.resume()
            return True
        self.start_round = 0
        truncate_metrics(self.out, 0)
        return False

    # ---- evaluation ---------------------------------------------------------------------------
    def evaluate(self, rounds_done: int) -> dict:
        fed = self.fed
        load_weights(fed.eval_model, fed.strategy.eval_weights())
        test = evaluate(fed.eval_model, fed.test, cache=self.head_cache)
        train_loss = probe_loss(fed.eval_model, fed.train_probe, cache=self.head_cache)
        costs = self.runner.method.per_round_costs(self.cfg, fed.strategy.n, fed.strategy.plan_tensor_nbytes())
        lr = fed.strategy.optimizer.param_groups[0]["lr"]
        return metrics_row(rounds_done, test, train_loss, costs, fed.counters, lr, self.runner.last,
                           privacy_metrics(self.runner.ledger), self.runner.plan_bytes)

    # ---- the loop -----------------------------------------------------------------------------
    def run(self) -> dict:
        from baffle.records.report import write_curves, write_summary

        cfg = self.cfg
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            checkpoint.remove_stale_temps(self.out)  # debris of a writer killed mid-write (we are the only writer)
            checkpoint.atomic_write_bytes(self.out / "config.toml", cfg.to_toml().encode())
        history = read_metrics(self.out)
        bar = _progress(cfg.run.rounds, self.start_round, self.progress, cfg.run.method)
        last = history[-1] if history else None
        for r in range(self.start_round, cfg.run.rounds):
            t0 = time.perf_counter()
            self.runner.run_round(r)
            self.fed.counters.wall_s += time.perf_counter() - t0
            done = r + 1
            if done % cfg.run.eval_every == 0 or done == cfg.run.rounds:
                last = self.evaluate(done)
                history.append(last)
                append_metrics(self.out, last)
            if self.out is not None and cfg.run.checkpoint_every and (done % cfg.run.checkpoint_every == 0 or done == cfg.run.rounds):
                self.save_checkpoint(done)
            if bar is not None:
                bar.update(1)
                if last is not None:
                    post = {"acc": f"{last['test_acc']:.4f}", "fwd": _si(self.fed.counters.forward_passes)}
                    if last.get("epsilon") is not None:  # from the last evaluation: the accountant is not free
                        post["eps"] = f"{last['epsilon']:.3g}"
                    bar.set_postfix(post, refresh=False)
        if bar is not None:
            bar.close()
        summary = make_summary(cfg, history, self.fed.counters)
        if self.out is not None:
            write_summary(self.out, summary)
            write_curves(self.out, history, title=f"{cfg.run.method} {cfg.model.name} {cfg.data.name}")
        return summary


def _si(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.1f}{unit}"
    return str(int(x))


def _progress(total: int, initial: int, enabled: bool, desc: str):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="round", dynamic_ncols=True)
