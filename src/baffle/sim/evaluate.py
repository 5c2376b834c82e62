"""Scoring a model on a dataset: what every front-end reports as test accuracy and loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from baffle.data.dataset import Dataset


@torch.inference_mode()
def evaluate(model: torch.nn.Module, data: Dataset, batch_size: int = 1000) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` on ``data``.

    The data stay where they are (the CPU); each batch is moved to the model's device (``run.device``)."""
    model.eval()
    device = next(model.parameters()).device
    correct, total_loss = 0, 0.0
    for start in range(0, len(data), batch_size):
        x, y = data.x[start : start + batch_size].to(device), data.y[start : start + batch_size].to(device)
        logits = model(x)
        total_loss += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    return correct / len(data), total_loss / len(data)


def probe_loss(model: torch.nn.Module, probe: Dataset) -> float | None:
    """The ``train_loss`` metric: mean loss on the training probe (``sim.factory.train_probe``), None when the
    probe is empty (``data.eval_train_samples = 0``: no metric, no cost). ``baffle run`` and the Flower server."""
    return evaluate(model, probe)[1] if len(probe) else None
