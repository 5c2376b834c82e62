"""The one factory: data, models, the server strategy and the clients of a run, built from a Config.

The simulator calls ``build``; the Flower server calls ``load_data``/``build_model_for`` for its model and
test set, and a Flower node builds its one client with ``make_client``: the same seeds, the same objects.

The device (``run.device``): ``build`` resolves it once (``config.run.resolve_device``) into the run's
``torch.device`` and moves the models there after building them on the CPU (so initial weights do not
depend on the device). Everything else follows the tensors it is given: engines generate noise and run
forwards where the parameters are, the server reconstructs and steps where its model is, evaluation and
the backprop twins move each minibatch to the model. Datasets, samplers, augmentation and the K-scalar
uploads stay on the CPU. The Flower app and ONNX Runtime clients are numpy/CPU paths and refuse cuda.
On cuda, ``exact_float32`` turns TF32 off first: the loss differences are the signal.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from baffle import estimator, plan_state
from baffle.records import checkpoint
from baffle.client import Client, load_weights
from baffle.config import Config
from baffle.config.run import resolve_device
from baffle.config.data import augments
from baffle.engine import Engine, engine_for
from baffle.engine.threads import chunk_workers, intra_op_threads
from baffle.data.augment import augment_cifar
from baffle.data.dataset import Dataset
from baffle.data.partition import partition
from baffle.data.registry import DATASET_INFO, load_dataset
from baffle.methods import get_method
from baffle.models import build_model
from baffle.protocol import streams
from baffle.records.metrics import Counters
from baffle.server.strategy import ServerStrategy
from baffle.server.trust import TrustAggregator
from baffle.sim.sampling import clients_per_round

log = logging.getLogger("baffle")


def load_data(cfg: Config) -> tuple[Dataset, Dataset]:
    train, rng = load_train(cfg)
    test = _task(cfg, load_dataset(cfg.data.name, split="test", root=cfg.data.root or None, image_size=cfg.data.image_size or None))
    n = cfg.data.test_subset
    if n and n < len(test):  # drawn after the training subset, from the same stream
        test = test.subset(np.sort(rng.choice(len(test), n, replace=False)))
    return train, test


def load_train(cfg: Config) -> tuple[Dataset, np.random.Generator]:
    """The training split of ``load_data`` alone (a Flower node never loads the test set), and the
    subset stream positioned where ``load_data`` draws the test subset from."""
    d = cfg.data
    size = d.image_size or None
    train = _task(cfg, load_dataset(d.name, split="train", root=d.root or None, image_size=size))
    native = DATASET_INFO[d.name].native_size if DATASET_INFO.get(d.name) and DATASET_INFO[d.name].mean else None  # text data: not images
    if size and native and native > 28 and size < native:  # the 14x14 default is tuned for the 28x28 sets
        log.warning("data.image_size=%d downsamples %s's %dx%d images; set data.image_size=0 for the native size",
                    size, d.name, native, native)
    rng = streams.rng(cfg.run.seed, streams.DATA_SUBSET)
    if d.train_subset and d.train_subset < len(train):
        train = train.subset(np.sort(rng.choice(len(train), d.train_subset, replace=False)))
    return train, rng


def _task(cfg: Config, ds: Dataset) -> Dataset:
    d = cfg.data
    if d.classes or d.transform != "none":  # a shifted task for fine-tuning (baffle.data.tasks)
        from baffle.data.tasks import task_view

        return task_view(ds, d.transform, d.classes)
    return ds


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
        weights, frozen = checkpoint.load_init_weights(m.init)
        if frozen is None:
            load_weights(model, weights)
        else:  # a checkpoint of a trainable-subset run: its subset on top of the frozen part it was trained on
            load_subset_weights(model, weights, frozen, m.init)
    if m.adapter != "none":  # after the pretrained weights: W_eff = W + B @ A starts equal to W
        from baffle.adapters import add_adapters

        add_adapters(model, m.adapter, m.lora_rank, seed=cfg.run.seed)
    return model


def load_subset_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], frozen: bytes, path: str) -> None:
    """Load a subset checkpoint's tensors into a freshly built model whose frozen rest (everything the checkpoint
    lacks) has the checkpoint's fingerprint ``frozen`` (``plan_state.frozen_sha256``); refuse anything else."""
    own = model.state_dict()
    unknown = [k for k in weights if k not in own]
    if unknown:
        raise checkpoint.CheckpointError(f"model.init {path} holds tensor {unknown[0]!r}, which this model lacks")
    names = tuple(k for k in own if k in weights)
    if (why := plan_state.frozen_mismatch(model, names, frozen)) is not None:
        raise checkpoint.CheckpointError(f"model.init {path} stores only trained tensors and {why}")
    plan_state.load_plan_state(model, weights, names, check_fingerprint=False)


def client_partitions(cfg: Config, train: Dataset) -> list[np.ndarray]:
    """The sample indices of every client (a pure function of the labels and the run seed)."""
    return partition(
        train.y.numpy(),
        cfg.data.num_clients,
        cfg.data.partition,
        alpha=cfg.data.alpha,
        shards_per_client=cfg.data.shards_per_client,
        seed=cfg.run.seed,
        groups=None if train.groups is None else train.groups.numpy(),  # data.partition=domain
    )


def make_client(cfg: Config, client_id: int, train: Dataset, indices: np.ndarray, model: torch.nn.Module, engine) -> Client:
    """Client ``client_id`` of a run: its sampler and augmentation seeds, its engine, its class (BP or not)."""
    from baffle.baselines import BPClient

    cls = BPClient if get_method(cfg.run.method).backprop else Client
    return cls(
        client_id,
        train,
        indices,
        model,
        batch_size=cfg.federation.batch_size,
        seed=streams.client_seed(cfg.run.seed, client_id),
        trainable=cfg.model.trainable,
        engine=engine,
        transform=augment_cifar if augments(cfg.data) else None,
    )


def attach_trust(cfg: Config, strategy: ServerStrategy, train: Dataset, engine: Engine) -> None:
    """``federation.aggregator='fltrust'``: give the server its trusted root batch and a model copy, so it can
    compute its own K loss differences each round with the clients' engine (``baffle.server.trust``)."""
    f, e = cfg.federation, cfg.estimator
    if f.aggregator != "fltrust":
        return
    n = min(f.trust_root_samples, len(train))
    root = train.subset(np.sort(streams.rng(cfg.run.seed, streams.TRUST_ROOT).choice(len(train), n, replace=False)))
    model = copy.deepcopy(strategy.model)
    x, y = root.x.to(strategy.device), root.y.to(strategy.device)  # moved once (run.device)

    def reference(seeds: np.ndarray) -> np.ndarray:
        load_weights(model, strategy.model.state_dict())
        params = estimator.select_parameters(model, cfg.model.trainable)
        return engine(model, params, x, y, seeds, e.sigma, e.scheme, F.cross_entropy, noise=e.noise)

    strategy.set_trust(TrustAggregator(reference, cfg.data.num_clients, f.trust_decay))


@dataclass
class Federation:
    cfg: Config
    train: Dataset
    test: Dataset
    strategy: ServerStrategy
    clients: list[Client]
    eval_model: torch.nn.Module
    train_probe: Dataset
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # run.device, resolved
    counters: Counters = field(default_factory=Counters)


def exact_float32(device: torch.device) -> None:
    """Keep float32 matmuls and convolutions in full float32 on an accelerator.

    cuDNN convolutions default to TF32 (a 10-bit mantissa): a relative error of ~1e-3 in every forward, while
    a forward-only client's signal is a loss difference of order sigma (1e-3 to 1e-4) times the loss. On an
    H200 with TF32 on, the batched engine's differences differed from the CPU's by 1.2% of the largest (the
    loop engine's by 0.009%); TF32 is the likely cause, which the next benchmarks/gpu_check.sh run measures.
    Process-wide, as torch's switches are.
    """
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


def build(cfg: Config) -> Federation:
    cfg.validate()
    device = torch.device(resolve_device(cfg))
    exact_float32(device)
    train, test = load_data(cfg)
    model = build_model_for(cfg, train).to(device)
    strategy = ServerStrategy(model, cfg)
    client_model = build_model_for(cfg, train).to(device)  # the clients' inference copy, shared in-process
    eval_model = build_model_for(cfg, train).to(device)
    if cfg.model.prune > 0:  # a fixed mask kept by the server; every client perturbs unpruned weights only
        from baffle.pruning import magnitude_mask

        strategy.set_mask(magnitude_mask(strategy.params, cfg.model.prune))
    engine = engine_for(cfg.estimator, strategy.mask, augments(cfg.data))
    backprop = get_method(cfg.run.method).backprop  # run.threads, or the rule of baffle.engine.threads
    shape, per_round = tuple(train.x.shape[1:]), clients_per_round(cfg)
    threads = intra_op_threads(cfg, client_model, engine, shape, per_round, backprop)
    torch.set_num_threads(threads)
    engine.workers = chunk_workers(cfg, client_model, engine, shape, per_round, threads, backprop)
    parts = client_partitions(cfg, train)
    clients = [make_client(cfg, i, train, idx, client_model, engine) for i, idx in enumerate(parts)]
    attach_trust(cfg, strategy, train, engine)
    if cfg.federation.onnx_clients > 0:  # some clients are ONNX Runtime + numpy only (baffle.mixed)
        from baffle.mixed import swap_in_onnx_clients

        clients = swap_in_onnx_clients(cfg, clients, train, client_model, strategy.mask)
    return Federation(cfg, train, test, strategy, clients, eval_model, train_probe(cfg, train), device)


def train_probe(cfg: Config, train: Dataset) -> Dataset:
    """The ``data.eval_train_samples`` training samples whose loss is the ``train_loss`` metric: the same
    samples in ``baffle run`` and on the Flower server (empty when 0: no metric, no cost)."""
    probe_n = min(cfg.data.eval_train_samples, len(train))
    probe_idx = streams.rng(cfg.run.seed, streams.TRAIN_PROBE).choice(len(train), probe_n, replace=False)
    return train.subset(np.sort(probe_idx))
