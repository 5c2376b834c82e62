"""A small, deterministic, learnable image task: tests and quick runs need no dataset on disk."""

from __future__ import annotations

import numpy as np

from baffle.protocol import streams

# Samples per split when data.name=synthetic and no size is asked for.
DEFAULT_SIZES = {"train": 2000, "test": 500}


def make_synthetic(
    num_samples: int,
    *,
    num_classes: int = 10,
    image_size: int = 28,
    seed: int = 0,
    split: str = "train",
) -> tuple[np.ndarray, np.ndarray]:
    """A small, deterministic, learnable image task for tests: uint8 N x 1 x S x S and int64 labels.

    Each class has a template made of three anisotropic Gaussian blobs (position cue a linear model
    can learn) modulated by a class-specific oriented grating (local texture cue that a conv net
    with global average pooling can learn). Samples jitter the template by up to 2 pixels, scale
    it, randomize the grating phase and add pixel noise. Templates depend only on ``seed``, samples
    on (seed, split), so train and test share classes but not images.
    """
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    s = image_size
    trng = streams.rng(seed, streams.SYNTHETIC_TEMPLATES)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float64)
    templates = np.zeros((num_classes, s, s))
    orientation = np.zeros(num_classes)
    frequency = np.zeros(num_classes)
    lo, hi = 0.22 * s, 0.78 * s
    for c in range(num_classes):
        for _ in range(3):
            cy, cx = trng.uniform(lo, hi, size=2)
            sa, sb = trng.uniform(0.05 * s, 0.13 * s, size=2)
            th = trng.uniform(0, np.pi)
            dy, dx = yy - cy, xx - cx
            u = dx * np.cos(th) + dy * np.sin(th)
            v = -dx * np.sin(th) + dy * np.cos(th)
            templates[c] += np.exp(-0.5 * ((u / sa) ** 2 + (v / sb) ** 2))
        orientation[c] = np.pi * c / num_classes + trng.uniform(-0.1, 0.1)
        frequency[c] = 0.12 + 0.16 * ((c * 3) % num_classes) / max(num_classes - 1, 1)
    templates = np.clip(templates, 0.0, 1.0)

    split_code = {"train": 1, "test": 2}.get(split, 3)
    srng = streams.rng(seed, split_code, num_samples)  # split_code 1|2|3: see protocol.streams
    labels = srng.permutation(np.arange(num_samples) % num_classes).astype(np.int64)
    shifts = srng.integers(-2, 3, size=(num_samples, 2))
    phases = srng.uniform(0, 2 * np.pi, size=num_samples)
    amps = srng.uniform(0.7, 1.0, size=num_samples)
    noise = srng.normal(0.0, 0.08, size=(num_samples, s, s))
    out = np.empty((num_samples, 1, s, s), dtype=np.uint8)
    for i in range(num_samples):
        c = labels[i]
        env = np.roll(templates[c], shift=tuple(shifts[i]), axis=(0, 1))
        proj = xx * np.cos(orientation[c]) + yy * np.sin(orientation[c])
        grating = 0.6 + 0.4 * np.cos(2 * np.pi * frequency[c] * proj + phases[i])
        img = np.clip(amps[i] * env * grating + noise[i], 0.0, 1.0)
        out[i, 0] = np.round(img * 255.0).astype(np.uint8)
    return out, labels
