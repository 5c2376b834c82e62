import os

import pytest
import torch

# Deterministic, quiet, and fair to a 2-core CI machine.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
os.environ.setdefault("BAFFLE_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "baffle"))


@pytest.fixture
def tiny_model():
    from baffle.models import build_model

    torch.manual_seed(0)
    return build_model("lenet", in_channels=1, num_classes=10, image_size=28)
