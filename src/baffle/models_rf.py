"""``rf_cnn``: one wide convolution kept at its seeded random initialisation, and a linear classifier that trains.

Why a model whose convolution never trains: the zeroth-order estimator's error grows like ``sqrt(n / K)`` with
the number of parameters it perturbs, so forward-only training pays for every parameter it moves, while a
parameter it does not move costs nothing but forward compute.  A wide random convolution followed by a
non-linearity and max-pooling is a rich fixed feature map (random-feature models: Jarrett et al. 2009, Saxe et
al. 2011); training only the classifier on top (``model.trainable = ["classifier.*"]``) leaves the estimator a
convex problem of ``10 * channels * grid**2 + 10`` parameters.  Three things make it fit BAFFLE:

* the frozen convolution costs no bytes: every party rebuilds it from the run's model seed (``run.seed``), as
  it rebuilds the perturbations from their seeds; plans carry only the classifier (``baffle.plan_state``) and
  the frozen part's fingerprint, so a client with other random weights is refused;
* its output is the same for every perturbation of the classifier, so the batched engine computes it once per
  call (``Program.shared_nodes`` / ``Program.prefix``) and perturbs only the last matrix multiply;
* the problem left to the estimator is convex (a linear classifier on fixed features), and backprop of the same
  classifier (the FedSGD twin) says what the same features can reach.

Shape: conv(k x k, "same", ``channels`` filters) -> norm -> act -> adaptive max-pool to a ``grid x grid`` map
(windows of 4x4 pixels at 28x28; overlapping windows of 5 at 32x32) -> flatten -> linear.
The defaults (32 filters of 5x5, a 7x7 grid: 1,568 features, 15,690 classifier parameters) were chosen by the
backprop capacity check in ``experiments/rf_capacity.py`` (docs/results/rf_capacity_fashion.json) and an ad hoc
1,500-round forward-only screen with experiments/fashion_rf.toml's settings (84.65% vs 83.29% at round 500): a 4x4 grid (5,130 parameters) has a lower ceiling and learned slower forward-only too.
Training every parameter (an empty ``model.trainable``) is allowed; it is then an ordinary one-stage CNN.
"""

from __future__ import annotations

import torch
from torch import nn

from baffle.models import _make_activation, _make_norm

__all__ = ["RandomFeatureCNN", "RF_CNN"]

#: the ``rf_cnn`` shape ``build_model`` uses (see the module docstring)
RF_CNN: dict[str, int] = {"channels": 32, "kernel_size": 5, "grid": 7}


class RandomFeatureCNN(nn.Module):
    """conv -> norm -> act -> grid max-pool -> flatten -> linear (see the module docstring)."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        *,
        image_size: int = 28,
        channels: int = 32,
        kernel_size: int = 5,
        grid: int = 7,
        activation: str = "hardswish",
        norm: str = "group",
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"rf_cnn needs an odd kernel size (\"same\" padding), got {kernel_size}")
        if image_size < grid:
            raise ValueError(f"rf_cnn pools {image_size}x{image_size} images to a {grid}x{grid} grid: images of at least {grid}x{grid} needed")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, channels, kernel_size=kernel_size, padding=kernel_size // 2, bias=norm != "batch"),
            _make_norm(norm, channels),
            _make_activation(activation),
            nn.AdaptiveMaxPool2d(grid),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(channels * grid * grid, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (N, num_classes)."""
        return self.classifier(self.features(x))
