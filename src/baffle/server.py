"""The in-process federation: builds everything from a Config and runs the round loop.

Per round: sample clients (a pure function of seed and round, so a resumed run samples the same ones),
send the plan, collect uploads, validate, aggregate, step (all via ``ServerStrategy``), evaluate the EMA
weights every ``eval_every`` rounds, checkpoint atomically every ``checkpoint_every`` rounds.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from baffle import attacks, checkpoint, estimator, faults, privacy
from baffle.baselines import BPClient
from baffle.client import Client, load_weights
from baffle.config import Config
from baffle.data import DATASET_INFO, Dataset, augment_cifar, load_dataset, partition
from baffle.messages import LocalPlan, Upload
from baffle.models import build_model
from baffle.strategy import RoundResult, ServerStrategy

log = logging.getLogger("baffle")

CHECKPOINT_NAME = "checkpoint.pt"


def resolve_engine(cfg: Config) -> Callable[..., np.ndarray]:
    if cfg.estimator.engine == "loop":
        return estimator.loss_differences
    from baffle.batched import make_batched_engine

    return make_batched_engine(cfg.estimator.max_memory_mb)


def load_data(cfg: Config) -> tuple[Dataset, Dataset]:
    d = cfg.data
    size = d.image_size or None
    root = d.root or None
    train = load_dataset(d.name, split="train", root=root, image_size=size)
    test = load_dataset(d.name, split="test", root=root, image_size=size)
    native = DATASET_INFO[d.name].native_size if d.name in DATASET_INFO else None
    if size and native and native > 28 and size < native:  # the 14x14 default is tuned for the 28x28 sets
        log.warning("data.image_size=%d downsamples %s's %dx%d images; set data.image_size=0 for the native size",
                    size, d.name, native, native)
    if d.classes or d.transform != "none":  # a shifted task for fine-tuning (baffle.tasks)
        from baffle.tasks import task_view

        train, test = task_view(train, d.transform, d.classes), task_view(test, d.transform, d.classes)
    rng = np.random.default_rng([cfg.run.seed, 1])
    if d.train_subset and d.train_subset < len(train):
        train = train.subset(np.sort(rng.choice(len(train), d.train_subset, replace=False)))
    if d.test_subset and d.test_subset < len(test):
        test = test.subset(np.sort(rng.choice(len(test), d.test_subset, replace=False)))
    return train, test


def build_model_for(cfg: Config, data: Dataset) -> torch.nn.Module:
    torch.manual_seed(cfg.run.seed)
    m = cfg.model
    model = build_model(
        m.name,
        in_channels=data.x.shape[1],
        num_classes=data.num_classes,
        image_size=data.x.shape[-1],
        activation=m.activation,
        norm=m.norm,
    )
    if m.init:
        load_weights(model, checkpoint.load_model_weights(m.init))
    if m.adapter != "none":  # after the pretrained weights: W_eff = W + B @ A starts equal to W
        from baffle.adapters import add_adapters

        add_adapters(model, m.adapter, m.lora_rank, seed=cfg.run.seed)
    return model


@torch.inference_mode()
def evaluate(model: torch.nn.Module, data: Dataset, batch_size: int = 1000) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` on ``data``."""
    model.eval()
    correct, total_loss = 0, 0.0
    for start in range(0, len(data), batch_size):
        x, y = data.x[start : start + batch_size], data.y[start : start + batch_size]
        logits = model(x)
        total_loss += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    return correct / len(data), total_loss / len(data)


@dataclass
class Counters:
    """Cumulative costs, checkpointed with the run."""

    rounds_done: int = 0
    forward_passes: int = 0  # minibatch forward passes, all clients
    forward_samples: int = 0  # samples pushed through a forward pass, all clients
    backward_passes: int = 0
    upload_bytes: int = 0
    wall_s: float = 0.0
    rejected: int = 0
    skipped_rounds: int = 0
    answered: int = 0  # client uploads received in time (all rounds)
    failed: int = 0  # sampled clients that failed mid-round
    timed_out: int = 0  # sampled clients dropped for exceeding federation.timeout_s
    sim_time_s: float = 0.0  # simulated waiting time of the server (straggler model)
    rejected_by_reason: dict = field(default_factory=dict)  # rejection code -> count


@dataclass
class Federation:
    cfg: Config
    train: Dataset
    test: Dataset
    strategy: ServerStrategy
    clients: list[Client]
    eval_model: torch.nn.Module
    train_probe: Dataset
    counters: Counters = field(default_factory=Counters)


def build(cfg: Config) -> Federation:
    cfg.validate()
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    train, test = load_data(cfg)
    model = build_model_for(cfg, train)
    strategy = ServerStrategy(model, cfg)
    client_model = build_model_for(cfg, train)  # the clients' inference copy, shared in-process
    eval_model = build_model_for(cfg, train)
    parts = partition(
        train.y.numpy(),
        cfg.data.num_clients,
        cfg.data.partition,
        alpha=cfg.data.alpha,
        shards_per_client=cfg.data.shards_per_client,
        seed=cfg.run.seed,
    )
    bp = cfg.run.method in ("fedsgd", "fedavg")
    cls = BPClient if bp else Client
    engine = resolve_engine(cfg)
    if cfg.model.prune > 0:  # a fixed mask kept by the server; every client perturbs unpruned weights only
        from baffle.pruning import magnitude_mask, masked_loss_differences

        strategy.set_mask(magnitude_mask(strategy.params, cfg.model.prune))
        engine = masked_loss_differences(strategy.mask)
    transform = augment_cifar if cfg.data.name.startswith("cifar") else None
    clients = [
        cls(
            i,
            train,
            idx,
            client_model,
            batch_size=cfg.federation.batch_size,
            seed=int(np.random.SeedSequence([cfg.run.seed, 2, i]).generate_state(1)[0]),
            trainable=cfg.model.trainable,
            engine=engine,
            transform=transform,
        )
        for i, idx in enumerate(parts)
    ]
    if cfg.federation.onnx_clients > 0:  # some clients are ONNX Runtime + numpy only (baffle.mixed)
        from baffle.mixed import swap_in_onnx_clients

        clients = swap_in_onnx_clients(cfg, clients, train, client_model, strategy.mask)
    probe_n = min(cfg.data.eval_train_samples, len(train))
    probe_idx = np.random.default_rng([cfg.run.seed, 3]).choice(len(train), probe_n, replace=False)
    return Federation(cfg, train, test, strategy, clients, eval_model, train.subset(np.sort(probe_idx)))


def sample_clients(cfg: Config, round_idx: int) -> list[int]:
    n = cfg.data.num_clients
    c = cfg.federation.clients_per_round
    m = int(c) if c > 1 else max(1, int(round(c * n)))
    if m >= n:
        return list(range(n))
    rng = np.random.default_rng([cfg.run.seed, 4, round_idx])
    return sorted(int(i) for i in rng.choice(n, m, replace=False))


class RoundRunner:
    """One round of each method. Kept apart from the loop so other front-ends can drive rounds."""

    def __init__(self, fed: Federation):
        self.fed = fed
        cfg = fed.cfg
        self.attackers = attacks.attacker_ids(cfg.data.num_clients, cfg.federation.attack_fraction, cfg.run.seed)
        self.ledger = make_ledger(cfg)
        self.last: RoundResult | None = None

    def availability(self, sampled: list[int], round_idx: int) -> faults.Availability:
        """Which sampled clients answer this round: decided before any upload is computed."""
        f = self.fed.cfg.federation
        return faults.availability(sampled, round_idx, self.fed.cfg.run.seed, f.dropout_rate, f.straggler_delay_s, f.timeout_s)

    def postprocess(self, uploads: list[Upload], round_idx: int) -> list[Upload]:
        """What actually leaves the clients: local DP noise (honest clients), then Byzantine corruption.

        Applied to computed Upload objects, so it holds for every way of computing them."""
        cfg = self.fed.cfg
        p, f = cfg.privacy, cfg.federation
        if p.mode == "local":
            uploads = [privacy.privatize_upload(u, p.clip, p.noise_multiplier, cfg.run.seed) for u in uploads]
        return attacks.apply_attack(uploads, f.attack, self.attackers, cfg.run.seed, round_idx)

    def client_uploads(self, sampled: list[int], round_idx: int) -> list[Upload]:
        """All sampled clients answer the round's plan (the client model holds the global weights)."""
        plan = self.fed.strategy.plan(round_idx, send_weights=False)
        if any(getattr(self.fed.clients[i], "needs_weights", False) for i in sampled):
            # ONNX Runtime clients (baffle.mixed) cannot share the torch model: their plan carries the weights
            from baffle.mixed import with_numpy_weights

            arrays_plan = with_numpy_weights(plan, self.fed.strategy.global_weights())
            return [c.step(arrays_plan if getattr(c, "needs_weights", False) else plan) for c in (self.fed.clients[i] for i in sampled)]
        if self.fed.cfg.estimator.fuse_clients:  # one batched pass for all clients; None when not applicable
            from baffle.batched import fused_uploads

            fused = fused_uploads([self.fed.clients[i] for i in sampled], plan)
            if fused is not None:
                return fused
        return [self.fed.clients[i].step(plan) for i in sampled]

    def run_round(self, round_idx: int) -> RoundResult:
        fed, cfg, c = self.fed, self.fed.cfg, self.fed.counters
        strategy = fed.strategy
        all_sampled = sample_clients(cfg, round_idx)
        avail = self.availability(all_sampled, round_idx)
        sampled = avail.answered  # from here on only the clients that answer do any work
        if self.ledger is not None:
            self.ledger.record(sampled)
        method = cfg.run.method
        weights = strategy.global_weights()
        for client_model in {id(cl.model): cl.model for cl in fed.clients if hasattr(cl, "model")}.values():
            load_weights(client_model, weights)  # the shared torch model (ONNX clients have none)
        bs = cfg.federation.batch_size
        if not sampled:
            log.warning("round %d skipped: none of the %d sampled clients answered", round_idx, len(all_sampled))
            result = RoundResult(round_idx, 0, skipped=True)
        elif method == "baffle":
            uploads = self.postprocess(self.client_uploads(sampled, round_idx), round_idx)
            ok, rejected = strategy.validate(uploads, round_idx, set(all_sampled))
            fp = estimator.forward_passes(cfg.estimator.K, cfg.estimator.scheme)
            c.forward_passes += fp * len(sampled)
            c.forward_samples += fp * sum(u.num_samples for u in ok)
            c.upload_bytes += sum(u.nbytes for u in uploads if isinstance(u, Upload))
            result = RoundResult(round_idx, len(ok), rejected)
            if len(ok) < cfg.federation.min_clients:
                log.warning("round %d skipped: %d valid uploads < min_clients=%d", round_idx, len(ok), cfg.federation.min_clients)
                result.skipped = True
            else:
                result.grad_norm = strategy.apply_loss_diffs(round_idx, strategy.aggregate_diffs(ok, round_idx))
        elif method == "fedsgd":
            grads, counts = zip(*(fed.clients[i].gradient(None) for i in sampled))
            w = np.array(counts, dtype=np.float64) / sum(counts)
            g = (w @ np.stack(grads).astype(np.float64)).astype(np.float32)
            c.forward_passes += len(sampled)
            c.backward_passes += len(sampled)
            c.forward_samples += sum(counts)
            c.upload_bytes += len(sampled) * (16 + 4 * strategy.n)
            result = RoundResult(round_idx, len(sampled), grad_norm=strategy.apply_gradient(round_idx, g))
        else:  # baffle_local, fedavg
            f = cfg.federation
            if method == "fedavg":
                ups = [fed.clients[i].local_sgd(weights, round_idx, f.local_steps, f.local_lr) for i in sampled]
                c.backward_passes += f.local_steps * len(sampled)
                c.forward_passes += f.local_steps * len(sampled)
                c.forward_samples += f.local_steps * bs * len(sampled)
            else:
                e = cfg.estimator
                plan = LocalPlan(round_idx, cfg.run.seed, e.K, e.sigma, e.scheme, bs, f.local_steps, f.local_lr, weights)
                ups = [fed.clients[i].local_train(plan) for i in sampled]
                fp = estimator.forward_passes(e.K, e.scheme) * f.local_steps
                c.forward_passes += fp * len(sampled)
                c.forward_samples += fp * bs * len(sampled)
            c.upload_bytes += sum(u.nbytes for u in ups)
            strategy.apply_weights(round_idx, ups)
            result = RoundResult(round_idx, len(ups))
        result.sampled, result.answered = len(all_sampled), len(sampled)
        result.failed, result.timed_out, result.round_time_s = len(avail.failed), len(avail.timed_out), avail.round_time_s
        c.rejected += len(result.rejected)
        c.skipped_rounds += int(result.skipped)
        c.answered += len(sampled)
        c.failed += len(avail.failed)
        c.timed_out += len(avail.timed_out)
        c.sim_time_s += avail.round_time_s
        for rej in result.rejected:
            c.rejected_by_reason[rej.code] = c.rejected_by_reason.get(rej.code, 0) + 1
        self.last = result
        return result


def make_ledger(cfg: Config) -> privacy.PrivacyLedger | None:
    p = cfg.privacy
    if p.mode == "none":
        return None
    n = cfg.data.num_clients
    c = cfg.federation.clients_per_round
    m = min(n, int(c) if c > 1 else max(1, int(round(c * n))))
    return privacy.PrivacyLedger(p.mode, p.noise_multiplier, p.delta, n, m)


def per_round_costs(cfg: Config, n_params: int, n_state_bytes: int) -> tuple[int, int]:
    """(upload bytes per client per round, forward passes per client per round) of a method."""
    e, f, m = cfg.estimator, cfg.federation, cfg.run.method
    if m == "baffle":
        return 16 + 4 * e.K, estimator.forward_passes(e.K, e.scheme)
    if m == "fedsgd":
        return 16 + 4 * n_params, 1
    if m == "fedavg":
        return 12 + n_state_bytes, f.local_steps
    return 12 + n_state_bytes, estimator.forward_passes(e.K, e.scheme) * f.local_steps


class Simulation:
    """``baffle run``: the whole federated run with metrics, checkpoints, resume and a progress bar."""

    def __init__(self, cfg: Config, out_dir: str | Path | None, progress: bool = True):
        self.cfg = cfg
        self.out = Path(out_dir) if out_dir else None
        self.progress = progress
        self.fed = build(cfg)
        self.runner = RoundRunner(self.fed)
        self.start_round = 0

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
        self.fed.counters = Counters(**state["counters"])
        self.start_round = state["round"]
        self._replay_ledger()
        self._truncate_metrics()

    def _replay_ledger(self) -> None:
        """Rebuild the privacy ledger of the rounds already done (answering sets are pure functions)."""
        ledger = self.runner.ledger
        if ledger is None:
            return
        for r in range(self.start_round):
            ledger.record(self.runner.availability(sample_clients(self.cfg, r), r).answered)

    def _truncate_metrics(self) -> None:
        """Drop evaluations written after the checkpoint (they will be redone) and a torn last line."""
        assert self.out is not None
        metrics = self.out / "metrics.jsonl"
        if not metrics.exists():
            return
        keep = []
        for ln in metrics.read_text().splitlines():
            try:
                row = json.loads(ln)
            except json.JSONDecodeError:  # a line cut by a crash mid-append: its round was not checkpointed
                continue
            if isinstance(row, dict) and row.get("round", 0) <= self.start_round:
                keep.append(ln)
        checkpoint.atomic_write_bytes(metrics, ("\n".join(keep) + "\n").encode() if keep else b"")

    def resume_or_start(self) -> bool:
        """``--resume``: continue from the checkpoint; a run killed before its first checkpoint starts over.

        Returns True when a checkpoint was loaded. A checkpoint that exists but is truncated or corrupted
        raises CheckpointError naming the file: it is never silently replaced."""
        assert self.out is not None
        if (self.out / CHECKPOINT_NAME).exists():
            self.resume()
            return True
        self.start_round = 0
        self._truncate_metrics()
        return False

    # ---- evaluation ---------------------------------------------------------------------------
    def evaluate(self, rounds_done: int) -> dict:
        fed = self.fed
        load_weights(fed.eval_model, fed.strategy.eval_weights())
        acc, loss = evaluate(fed.eval_model, fed.test)
        _, train_loss = evaluate(fed.eval_model, fed.train_probe)
        c = fed.counters
        up, fp = per_round_costs(
            self.cfg, fed.strategy.n, sum(t.numel() * t.element_size() for t in fed.strategy.model.state_dict().values())
        )
        return {
            "round": rounds_done,
            "test_acc": acc,
            "test_loss": loss,
            "train_loss": train_loss,
            "upload_bytes_per_client": up,
            "client_forward_passes": fp,
            "total_forward_passes": c.forward_passes,
            "total_forward_samples": c.forward_samples,
            "total_backward_passes": c.backward_passes,
            "total_upload_bytes": c.upload_bytes,
            "rejected_uploads": c.rejected,
            "skipped_rounds": c.skipped_rounds,
            "rejected_by_reason": dict(sorted(c.rejected_by_reason.items())),
            "answered_uploads": c.answered,
            "failed_clients": c.failed,
            "timed_out_clients": c.timed_out,
            "sim_wait_s": round(c.sim_time_s, 3),
            **self._last_round_metrics(),
            **self._privacy_metrics(),
            "lr": fed.strategy.optimizer.param_groups[0]["lr"],
            "wall_s": round(c.wall_s, 3),
        }

    def _last_round_metrics(self) -> dict:
        last = self.runner.last
        if last is None:
            return {}
        reasons: dict[str, int] = {}
        for rej in last.rejected:
            reasons[rej.code] = reasons.get(rej.code, 0) + 1
        return {
            "round_sampled": last.sampled,
            "round_answered": last.answered,
            "round_accepted": last.accepted,
            "round_rejected_by_reason": reasons,
            "round_skipped": last.skipped,
        }

    def _privacy_metrics(self) -> dict:
        ledger = self.runner.ledger
        if ledger is None:
            return {}
        eps = ledger.epsilon()
        return {"privacy_mode": ledger.mode, "epsilon": eps if eps != float("inf") else None, "delta": ledger.delta}

    # ---- the loop -----------------------------------------------------------------------------
    def run(self) -> dict:
        from baffle.report import write_curves, write_summary

        cfg = self.cfg
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            checkpoint.remove_stale_temps(self.out)  # debris of a writer killed mid-write (we are the only writer)
            checkpoint.atomic_write_bytes(self.out / "config.toml", cfg.to_toml().encode())
        history = self._read_metrics()
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
                self._append_metrics(last)
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

    def _read_metrics(self) -> list[dict]:
        if self.out is None or not (self.out / "metrics.jsonl").exists():
            return []
        return [json.loads(ln) for ln in (self.out / "metrics.jsonl").read_text().splitlines() if ln.strip()]

    def _append_metrics(self, row: dict) -> None:
        if self.out is None:
            return
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())  # on disk before the checkpoint that covers this round


def make_summary(cfg: Config, history: list[dict], c: Counters) -> dict:
    accs = [h["test_acc"] for h in history]
    return {
        "method": cfg.run.method,
        "model": cfg.model.name,
        "dataset": cfg.data.name,
        "rounds": cfg.run.rounds,
        "final_test_acc": accs[-1] if accs else None,
        "best_test_acc": max(accs) if accs else None,
        "final_test_loss": history[-1]["test_loss"] if history else None,
        "total_upload_bytes": c.upload_bytes,
        "upload_bytes_per_client_per_round": history[-1]["upload_bytes_per_client"] if history else None,
        "total_forward_passes": c.forward_passes,
        "total_backward_passes": c.backward_passes,
        "rejected_uploads": c.rejected,
        "skipped_rounds": c.skipped_rounds,
        "rejected_by_reason": dict(sorted(c.rejected_by_reason.items())),
        "answered_uploads": c.answered,
        "epsilon": history[-1].get("epsilon") if history else None,
        "wall_s": round(c.wall_s, 2),
    }


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
