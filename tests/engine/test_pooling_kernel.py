"""The batched engine's max-pool (rows first, then columns) is bit-identical to torch's, borders included."""

import pytest
import torch
import torch.nn.functional as F

from baffle.engine.batched.kernels import is_tiling_pool, tiling_max_pool2d


@pytest.mark.parametrize("kernel", [2, 3, (2, 3), (1, 2), (3, 1)])
@pytest.mark.parametrize("hw", [(14, 14), (7, 7), (9, 10), (3, 5)])
def test_tiling_max_pool_equals_torch(kernel, hw):
    g = torch.Generator().manual_seed(hash((kernel, hw)) % 2**31)
    t = torch.randn(3, 5, *hw, generator=g)
    t[0, 0].fill_(0.5)  # ties
    t[1, 1, 0, 0] = float("-inf")
    t[2, 2, -1, -1] = float("nan")  # NaN propagates as in torch
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    if hw[0] < kh or hw[1] < kw:
        pytest.skip("window larger than the input")
    ref = F.max_pool2d(t, (kh, kw), stride=(kh, kw))
    out = tiling_max_pool2d(t, (kh, kw))
    assert out.shape == ref.shape and torch.equal(out.isnan(), ref.isnan())
    assert torch.equal(out.nan_to_num(), ref.nan_to_num())


def test_only_tiling_pools_take_the_fast_path():
    assert is_tiling_pool(torch.nn.MaxPool2d(2))
    assert not is_tiling_pool(torch.nn.MaxPool2d(3, stride=2))
    assert not is_tiling_pool(torch.nn.MaxPool2d(2, padding=1))
