"""Scoring a model on a dataset: what every front-end reports as test accuracy and loss.

Image models go through in slices of ``batch_size`` (1,000), as always. Text models (those with ``head_input``,
``length_order`` and ``eval_batch``: ``nlp.bert.TextClassifier``) go through in batches of ``eval_batch``
sentences of similar length, each cut to its longest sentence, and the logits are ``classifier(head_input(x))``,
the ops of their forward. On the README's MiniLM run that took the final evaluation (3,891 test + 2,000 probe
sentences) from 204 s to about 55 s on one core: the 1,000-sentence batches padded every sentence to 64 tokens and
faulted in gigabytes of fresh activations per batch (26M page faults, 73 s of system time).

:class:`HeadCache` goes further when nothing below the head can change (``model.trainable = ["classifier.*"]``):
the head inputs of a dataset are computed once and reused by later evaluations, as long as the SHA-256 of
everything but the head (``plan_state.frozen_sha256``, the plans' fingerprint) is the one they were computed
with. The logits are the same bits: the same ``head_input`` of the same batches, then the same head. It serves the
text models and the image models whose forward is ``classifier(head_input(x))`` (``rf_cnn``, ``rf_white``: without
it, each evaluation of a CIFAR-10 rf_white run put the 10,000 test images through the frozen convolution again).
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

from baffle import plan_state
from baffle.data.dataset import Dataset


def is_text_model(model: torch.nn.Module) -> bool:
    """Whether ``model`` is scored by head inputs in length-ordered batches (see the module docstring)."""
    return all(hasattr(model, a) for a in ("head_input", "length_order", "eval_batch", "classifier"))


def has_head(model: torch.nn.Module) -> bool:
    """Whether ``model`` computes ``classifier(head_input(x))``: a text model, or an image model that says so by
    defining ``head_input`` (models_rf)."""
    return hasattr(model, "head_input") and isinstance(getattr(model, "classifier", None), torch.nn.Module)


def head_names(model: torch.nn.Module) -> tuple[str, ...]:
    """The state entries of a model's head (``classifier.*``)."""
    return tuple(f"classifier.{k}" for k in model.classifier.state_dict())


class HeadCache:
    """Head inputs of the datasets a run evaluates on, reused while the rest of the model is unchanged.

    ``changing`` are the state entries a run can change (``ServerStrategy.state_names``): the cache is used only
    when they all belong to the head, so a run that trains more never pays the fingerprint for nothing. Exactness
    does not rest on that claim: every use compares the fingerprint of everything but the head."""

    def __init__(self, changing: Sequence[str]):
        self.changing = frozenset(changing)
        self._entries: list[tuple[Dataset, bytes, torch.Tensor]] = []

    def applies(self, model: torch.nn.Module) -> bool:
        return has_head(model) and self.changing <= set(head_names(model))

    def features(self, model: torch.nn.Module, data: Dataset, batches: list[torch.Tensor]) -> torch.Tensor:
        """``head_input`` of every sample of ``data``, computed in ``batches`` (or reused)."""
        digest = plan_state.frozen_sha256(model, head_names(model))
        assert digest is not None  # a model with a head has something below it
        for ds, d, feats in self._entries:
            if ds is data and d == digest:
                return feats
        feats = torch.empty(0)
        for idx in batches:
            f = model.head_input(data.x[idx].to(_device(model)))
            if feats.numel() == 0:
                feats = torch.empty((len(data), *f.shape[1:]), dtype=f.dtype, device=f.device)
            feats[idx.to(f.device)] = f
        self._entries = [e for e in self._entries if e[0] is not data] + [(data, digest, feats)]
        return feats


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _text_batches(model: torch.nn.Module, data: Dataset) -> list[torch.Tensor]:
    order = model.length_order(data.x)
    return [order[i : i + model.eval_batch] for i in range(0, len(data), model.eval_batch)]


@torch.inference_mode()
def evaluate(model: torch.nn.Module, data: Dataset, batch_size: int = 1000,
             cache: HeadCache | None = None) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` on ``data``.

    The data stay where they are (the CPU); each batch is moved to the model's device (``run.device``).
    ``cache`` reuses a frozen-encoder text model's head inputs across calls (see :class:`HeadCache`)."""
    model.eval()
    device = _device(model)
    correct, total_loss = 0, 0.0
    for logits, y in _logits(model, data, batch_size, cache, device):
        total_loss += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    return correct / len(data), total_loss / len(data)


def _logits(model: torch.nn.Module, data: Dataset, batch_size: int, cache: HeadCache | None,
            device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    text, cached = is_text_model(model), cache is not None and cache.applies(model)
    if not text and not cached:
        for start in range(0, len(data), batch_size):
            x, y = data.x[start : start + batch_size].to(device), data.y[start : start + batch_size].to(device)
            yield model(x), y
        return
    # text: length-ordered batches; an image model's head over cached inputs: the same slices as above
    batches = _text_batches(model, data) if text else list(torch.arange(len(data)).split(batch_size))
    feats = cache.features(model, data, batches) if cached else None
    for idx in batches:
        y = data.y[idx].to(device)
        h = model.head_input(data.x[idx].to(device)) if feats is None else feats[idx.to(feats.device)]
        yield model.classifier(h), y


def probe_loss(model: torch.nn.Module, probe: Dataset, cache: HeadCache | None = None) -> float | None:
    """The ``train_loss`` metric: mean loss on the training probe (``sim.factory.train_probe``), None when the
    probe is empty (``data.eval_train_samples = 0``: no metric, no cost). ``baffle run`` and the Flower server."""
    return evaluate(model, probe, cache=cache)[1] if len(probe) else None
