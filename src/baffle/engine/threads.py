"""The intra-op thread policy: how many threads torch may use for one run (``run.threads = 0``).

Why not torch's default (one thread per core): every layer call opens an OpenMP parallel region that ends
at a barrier, and a region is only as fast as its slowest thread. When a region holds little work, the
threads spend their time synchronising; when another process is running, one thread is descheduled for a
scheduler time slice (milliseconds) and every other thread waits at the barrier. The default job (a
4.9k-parameter LeNet on 14x14 MNIST, 10 clients fused, K=20) was measured at 72 ms per round with 2
threads against 27 ms with 1 on a busy 2-core machine; on this project's machine at load 9, 1-2.8 s
against 0.19-0.28 s, and even a WRN-10-2 backprop step at batch 64 ran 2.5x slower with 2 threads.

The rule, decided once when a run is built:

    threads = clamp(floor(flops_per_layer / MIN_FLOPS_PER_THREAD), 1, free cores)

* ``flops_per_layer`` is the work of one parallel region, estimated as the FLOPs of one training call
  divided by the model's convolution and linear layers. For a forward-only client a call is one chunk of
  perturbed members on one slice of the (fused) minibatches, sized by the engine's own planner
  (``BatchedEngine.call_size``); for a backprop client one forward + backward of a minibatch (3x).
* :data:`MIN_FLOPS_PER_THREAD` (0.25 GFLOP, a few milliseconds of one core) keeps the default job (0.17
  GFLOP per layer call) on one thread with a 3x margin, while models big enough to feed several cores
  get them.
* free cores = the cores this process may use (its affinity) minus the 1-minute load average of the
  machine, rounded: on a machine already busy with other jobs, extra threads only wait at barriers.

It only changes how fast a run goes, never which run it is: thread counts were checked not to change the
default job's weights (large reductions in big models may round differently across thread counts, as with
torch's own default; set ``run.threads`` for runs that must be bit-reproducible across machines).
``run.threads = N`` (N > 0) overrides the rule. ``benchmarks/threads.py`` measures it.

Coarse parallelism (:func:`chunk_workers`): when the rule gives one intra-op thread, the batched engine
evaluates its independent chunks of perturbed members on up to one thread per usable core at once. Each
chunk holds milliseconds of work and the threads meet once per call, not once per layer, so a descheduled
thread costs a time slice, not a stall at every barrier: on the 2-core machine the default job ran 0.82x
the one-thread round time with 2 workers at load ~4, and 0.68x beside a competing spinner
(``benchmarks/threads.py``), which is why the usable cores, not the free ones, bound it. The chunk size
never depends on the worker count, so neither do the losses. Only under the automatic policy:
``run.threads = N`` means N cores at most, and one chunk worker.
"""

from __future__ import annotations

import os

from torch import nn

from baffle.config import Config
from baffle.engine.base import Engine
from baffle.engine.batched import BatchedEngine
from baffle.estimator import select_parameters
from baffle.models import layer_flops

MIN_FLOPS_PER_THREAD = 2.5e8


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and ``taskset`` narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def free_cores(cores: int | None = None, load: float | None = None) -> int:
    """Usable cores minus the machine's 1-minute load average (rounded), at least 1."""
    cores = usable_cores() if cores is None else cores
    load = os.getloadavg()[0] if load is None else load
    return int(max(1, cores - round(load)))


def threads_for_work(flops_per_layer: float, cores: int) -> int:
    """The rule itself: one thread per MIN_FLOPS_PER_THREAD of one layer's work, between 1 and ``cores``."""
    return int(max(1, min(cores, flops_per_layer // MIN_FLOPS_PER_THREAD)))


def flops_per_layer(
    model: nn.Module, sample_shape: tuple[int, ...], samples: int, members: int = 1, once: frozenset[str] = frozenset(),
    skipped: frozenset[str] = frozenset(),
) -> float:  # fmt: skip
    """FLOPs of one layer call on average: the forward of ``samples`` inputs for ``members`` perturbed
    models, spread over the model's convolution and linear layers. The layers named in ``once`` (a frozen
    bottom, ``BatchedEngine.frozen_bottom``) run once for all members; those in ``skipped`` not at all (a frozen
    bottom whose output the engine's feature cache holds: every round after a client's first pass over its data)."""
    flops = {name: f for name, f in layer_flops(model, tuple(sample_shape)).items() if name not in skipped}
    work = sum(f * (1 if name in once else members) for name, f in flops.items())
    return work * samples / max(1, len(flops))


def intra_op_threads(
    cfg: Config,
    model: nn.Module,
    engine: Engine,
    sample_shape: tuple[int, ...],
    clients_per_round: int,
    backprop: bool = False,
    cores: int | None = None,
) -> int:
    """Threads for a run: ``run.threads`` if set, else :func:`threads_for_work` of the training pass
    over the free cores (``cores``, when given, replaces the measured free cores: tests and benchmarks).

    The training pass is one engine call of a forward-only client (all the round's clients at once when
    the engine fuses them), or one forward + backward (3x the forward FLOPs) of a backprop client.
    """
    if cfg.run.threads:
        return cfg.run.threads
    cores = cores if cores is not None else free_cores()
    batch = cfg.federation.batch_size
    if backprop:
        return threads_for_work(3 * flops_per_layer(model, sample_shape, batch), cores)
    samples, members, once, skipped = batch, 1, frozenset[str](), frozenset[str]()
    if isinstance(engine, BatchedEngine):
        if cfg.estimator.fuse_clients and engine.can_fuse_clients(model):
            samples = batch * clients_per_round
        params = select_parameters(model, cfg.model.trainable)
        members, samples = engine.call_size(model, params, samples, sample_shape, cfg.estimator.K, cfg.estimator.scheme)
        once = engine.frozen_bottom(model, params)
        if engine.features.max_bytes:  # the steady round reads the bottom's rows from the feature cache
            skipped = once
    return threads_for_work(flops_per_layer(model, sample_shape, samples, members, once, skipped), cores)


def chunk_workers(
    cfg: Config,
    model: nn.Module,
    engine: Engine,
    sample_shape: tuple[int, ...],
    clients_per_round: int,
    threads: int,
    backprop: bool = False,
    cores: int | None = None,
) -> int:
    """Threads evaluating the batched engine's chunks at once: the usable cores (``cores`` when given), at
    most one per chunk of a training call, when the run picked its threads automatically and got one
    intra-op thread; else 1."""
    if cfg.run.threads or threads > 1 or backprop or not isinstance(engine, BatchedEngine):
        return 1
    cores = cores if cores is not None else usable_cores()
    if cores < 2:
        return 1
    samples = cfg.federation.batch_size
    if cfg.estimator.fuse_clients and engine.can_fuse_clients(model):
        samples *= clients_per_round
    params = select_parameters(model, cfg.model.trainable)
    return max(1, min(cores, engine.chunks(model, params, samples, tuple(sample_shape), cfg.estimator.K, cfg.estimator.scheme)))
