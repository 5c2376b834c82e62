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

__all__ = ["RF_CNN", "RF_WHITE", "RandomFeatureCNN", "WhitenedRandomFeatures", "patch_prior"]

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

    def head_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the classifier reads: evaluation keeps it per dataset while only the classifier trains
        (``sim.evaluate.HeadCache``)."""
        return self.features(x)


# ---- rf_white: whitened random features for colour images -------------------------------------------------------
#: the ``rf_white`` shape ``build_model`` uses (see :class:`WhitenedRandomFeatures`)
RF_WHITE: dict[str, int | float] = {"filters": 128, "kernel_size": 5, "grid": 3, "threshold": 0.5, "corr_length": 10.0}

#: correlation of the R, G and B values of one pixel, after per-channel standardisation (natural images are
#: strongly correlated across colours; the prior needs only the order of magnitude)
_COLOUR_CORR = ((1.0, 0.9, 0.8), (0.9, 1.0, 0.9), (0.8, 0.9, 1.0))


def patch_prior(channels: int, kernel_size: int, corr_length: float) -> torch.Tensor:
    """Covariance of a standardised ``channels x k x k`` natural-image patch under a fixed, data-free prior: pixel
    correlation decaying as ``exp(-distance / corr_length)``, times a fixed colour correlation (one channel: 1).

    Why a prior and not the data's covariance: the frozen filters must be rebuilt by every party from the seed alone
    (a client never sees the others' images, the server sees none), so whitening cannot use the training set.
    Measured against whitening with the training set's own patch covariance: docs/cifar.md."""
    ij = torch.stack(torch.meshgrid(torch.arange(kernel_size), torch.arange(kernel_size), indexing="ij"), -1)
    pos = ij.reshape(-1, 2).double()
    spatial = torch.exp(-torch.cdist(pos, pos) / corr_length)
    colour = torch.tensor(_COLOUR_CORR, dtype=torch.float64) if channels == 3 else torch.eye(channels, dtype=torch.float64)
    return torch.kron(colour, spatial)


class WhitenedRandomFeatures(nn.Module):
    """``rf_white``: a frozen convolution of seeded random filters drawn white in a whitened patch space, each used
    with both signs and a threshold, average-pooled to a ``grid x grid`` map and standardised per sample, and a
    trained linear classifier.

    Why this shape (experiments/rf_capacity.py, docs/cifar.md): ``rf_cnn``'s plain random 5x5 filters keep
    CIFAR-10's classifier under ~61% even trained with exact gradients, because natural-image patches are dominated
    by their smooth, low-frequency directions and random filters mostly measure those. Drawing the filters as
    ``g @ Z`` with ``Z = (C + eps I)^(-1/2)`` for the patch covariance ``C`` (:func:`patch_prior`) spreads them over
    edges and colour contrasts, as ZCA whitening does for k-means features (Coates, Lee & Ng 2011). Each filter
    gives two channels, ``relu(z - t)`` and ``relu(-z - t)`` (the conv holds ``w`` and ``-w``, the threshold ``t``
    in the bias), with ``z`` scaled to unit variance under the prior; average pooling keeps how much of each pattern
    a region holds, and each sample's pooled features are standardised together (one-group GroupNorm, no affine).
    Every module is one the batched engine runs and the feature cache stores (conv, ReLU, pool, GroupNorm, flatten,
    linear): train only ``classifier.*``."""

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        *,
        image_size: int = 32,
        filters: int = 128,
        kernel_size: int = 5,
        grid: int = 3,
        threshold: float = 0.5,
        corr_length: float = 10.0,
        eps: float = 0.1,
        prior: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if image_size < kernel_size + grid - 1:
            raise ValueError(f"rf_white needs images of at least {kernel_size + grid - 1}x{kernel_size + grid - 1} "
                             f"({kernel_size}x{kernel_size} filters, a {grid}x{grid} grid), got {image_size}x{image_size}")
        conv = nn.Conv2d(in_channels, 2 * filters, kernel_size=kernel_size)
        # ``prior``: another patch covariance (experiments/rf_capacity.py compares the training set's own)
        prior = patch_prior(in_channels, kernel_size, corr_length) if prior is None else prior.double()
        evals, evecs = torch.linalg.eigh(prior)
        whiten = evecs @ torch.diag((evals + eps).rsqrt()) @ evecs.T
        g = torch.randn(filters, prior.shape[0]).double()  # the global RNG, seeded by run.seed as every init is
        w = (g / g.norm(dim=1, keepdim=True)) @ whiten
        w = w / torch.einsum("fi,ij,fj->f", w, prior, w).sqrt()[:, None]  # unit variance of z under the prior
        with torch.no_grad():
            conv.weight.copy_(torch.cat([w, -w]).reshape(conv.weight.shape))
            conv.bias.fill_(-threshold)
        # each sample's pooled features standardised as one group (non-affine GroupNorm: no parameters, no batch
        # statistics, so rows stay cacheable): the ReLU features share a large positive mean, a direction that
        # dominates the classifier's loss surface; without it the same classifier learned far slower (docs/cifar.md)
        pooled_norm = nn.GroupNorm(1, 2 * filters, affine=False)
        self.features = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(grid), pooled_norm, nn.Flatten())
        self.classifier = nn.Linear(2 * filters * grid * grid, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (N, num_classes)."""
        return self.classifier(self.features(x))

    def head_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the classifier reads: evaluation keeps it per dataset while only the classifier trains
        (``sim.evaluate.HeadCache``)."""
        return self.features(x)
