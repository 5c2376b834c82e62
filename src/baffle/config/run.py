"""[run]: which method, how long, seeds, evaluation and checkpoint cadence, where it runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from baffle.config.checks import ConfigError, choice, nonneg, positive
from baffle.config.choices import DEVICES, METHODS

if TYPE_CHECKING:
    from baffle.config.core import Config


@dataclass
class RunConfig:
    method: str = "baffle"  # baffle (forward-only, scalar uploads) | baffle_multistep (S local steps, S x K scalars) | baffle_local | fedsgd | fedavg (backprop)
    rounds: int = 3000
    seed: int = 0
    eval_every: int = 250
    checkpoint_every: int = 250
    device: str = "cpu"  # cpu | cuda | auto (cuda if torch sees one, else cpu); see resolve_device
    threads: int = 0  # torch intra-op threads; 0 = torch's default


def validate(r: RunConfig, cfg: "Config") -> None:
    choice("run.method", r.method, METHODS)
    positive("run.rounds", r.rounds)
    nonneg("run.seed", r.seed)
    positive("run.eval_every", r.eval_every)
    nonneg("run.checkpoint_every", r.checkpoint_every)
    choice("run.device", r.device, DEVICES)
    if r.device != "cpu":
        resolve_device(cfg)  # refuse cuda without CUDA, and numpy-only clients on cuda, before anything is built
    nonneg("run.threads", r.threads)


def resolve_device(cfg: "Config") -> str:
    """The device a run's torch work runs on: "cpu" or "cuda" ("auto" = cuda if torch sees one, else cpu).

    The one rule, used by validation and by the factory (which turns it into the run's ``torch.device``).
    Refused with a one-line error: "cuda" where torch sees no CUDA device, and cuda together with ONNX
    Runtime clients (``federation.onnx_clients``), which are numpy-only and run on the CPU.
    """
    name = cfg.run.device
    if name == "cpu":
        return name
    import torch  # only here: validating a CPU config needs no torch

    available = torch.cuda.is_available()
    if name == "cuda" and not available:
        raise ConfigError("run.device='cuda' but torch sees no CUDA device (torch.cuda.is_available() is False); "
                          "use run.device='cpu' or 'auto'")
    resolved = "cuda" if available else "cpu"
    if resolved == "cuda" and cfg.federation.onnx_clients > 0:
        raise ConfigError(f"run.device={name!r} runs on cuda, but federation.onnx_clients > 0 adds ONNX Runtime + numpy "
                          "clients, which run on the CPU only; use run.device='cpu'")
    return resolved
