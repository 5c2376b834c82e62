"""The prefix cache's row store (baffle.prefix.PrefixCache.keep_rows): a frozen bottom's output per sample kept
across engine calls, for MiniLM-style text models and EfficientNet-Lite on the loop path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from baffle.engine import make_engine
from baffle.engine.loop import loss_differences
from baffle.estimator import select_parameters
from baffle.models import build_model

HEAD = ["classifier.*"]
TOP = ["classifier.*", "bert.blocks.1.*"]  # bert_tiny has two blocks: the store holds block 0's output


def _x(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.stack([ids * mask, mask], 1).unsqueeze(2).to(torch.int32)


def _sentences(n: int, seed: int) -> torch.Tensor:
    """``n`` sentences of 3..9 tokens, padded to 12: lengths differ, so batches are cut to different lengths."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 2000, (n, 12), generator=g)
    lengths = torch.randint(3, 10, (n,), generator=g)
    mask = (torch.arange(12)[None, :] < lengths[:, None]).to(torch.int64)
    return _x(ids, mask)


def _pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    """(a model with the prefix cache, the same weights without it)."""
    torch.manual_seed(0)
    model, plain = build_model("bert_tiny", num_classes=2), build_model("bert_tiny", num_classes=2)
    plain.load_state_dict(model.state_dict())
    plain.prefix_cache = None
    return model, plain


def _diffs(model, patterns, x, store_bytes, seeds=np.arange(1, 7, dtype=np.uint64)) -> np.ndarray:
    y = torch.arange(len(x)) % 2
    return loss_differences(model, select_parameters(model, patterns), x, y, seeds, 1e-2, "forward",
                            row_cache_bytes=store_bytes)


@pytest.mark.parametrize("patterns", [HEAD, TOP])
def test_row_store_computes_each_sentence_once_and_answers_like_plain_forwards(patterns):
    """Batches sharing sentences read them from the store (each sentence's bottom computed once) and give the
    plain model's loss differences up to float32's last bits."""
    model, plain = _pair()
    a, b = _sentences(6, 1), _sentences(6, 2)
    batches = [a, torch.cat([a[:3], b[:3]]), a.flip(0), b]
    for x in batches:
        got, ref = _diffs(model, patterns, x, 1 << 20), _diffs(plain, patterns, x, 0)
        np.testing.assert_allclose(got, ref, atol=2e-5, rtol=0)
    cache = model.prefix_cache
    assert cache.row_misses == 12 and cache.row_hits == 12  # 12 distinct sentences, 24 rows asked for
    assert len(cache.rows) == 12 and cache.row_bytes == sum(r.numel() * 4 for r in cache.rows.values())
    assert cache.stages_run < 0.5 * cache.stages_total


def test_a_fresh_store_computes_the_same_bits_in_any_batch_order():
    """A sentence's stored state is computed alone, so it does not depend on the minibatch it first came in: a
    resumed run (its store empty) answers a round bit for bit as the run that had seen the sentences before."""
    warm, cold = _pair()[0], _pair()[0]
    a, b = _sentences(6, 1), _sentences(6, 2)
    mixed = torch.cat([b[3:], a[:3]])
    for x in (a, b):  # the warm model has seen every sentence in other batches
        _diffs(warm, TOP, x, 1 << 20)
    assert np.array_equal(_diffs(warm, TOP, mixed, 1 << 20), _diffs(cold, TOP, mixed, 1 << 20))
    assert warm.prefix_cache.row_hits == 6 and cold.prefix_cache.row_hits == 0


def test_row_store_empties_when_a_frozen_weight_moves():
    """A weight below the boundary that changes between calls (another plan, a loaded model) empties the store:
    no answer reads a sentence's state under the old weights."""
    model, plain = _pair()
    x = _sentences(6, 1)
    _diffs(model, HEAD, x, 1 << 20)
    with torch.no_grad():
        for m in (model, plain):
            next(m.bert.blocks[0].parameters()).mul_(1.5)
    x2 = x.clone()  # a new tensor holding the same sentences: only the weights say the rows are stale
    np.testing.assert_allclose(_diffs(model, HEAD, x2, 1 << 20), _diffs(plain, HEAD, x2, 0), atol=2e-5, rtol=0)
    assert model.prefix_cache.row_misses == 12 and model.prefix_cache.row_hits == 0


def test_a_full_store_runs_new_rows_the_plain_way():
    """Past its bound the store keeps what it has and a batch with a new sentence runs every stage as before
    (bit for bit the plain forwards); a bound of 0 keeps nothing."""
    model, plain = _pair()
    x = _sentences(6, 1)
    assert np.array_equal(_diffs(model, HEAD, x, 64), _diffs(plain, HEAD, x, 0))
    assert model.prefix_cache.row_bytes <= 64
    alone = []  # sentences put through the embeddings one at a time (the store's per-row computation)
    hook = model.bert.embeddings.register_forward_hook(lambda m, args, out: alone.append(1) if out.shape[0] == 1 else None)
    x2 = _sentences(6, 2)  # once a row did not fit, new rows are not computed alone only to be dropped
    assert np.array_equal(_diffs(model, HEAD, x2, 64), _diffs(plain, HEAD, x2, 0))
    hook.remove()
    assert alone == []
    assert np.array_equal(_diffs(model, HEAD, x, 0), _diffs(plain, HEAD, x, 0))
    assert model.prefix_cache.rows == {}
    with pytest.raises(ValueError, match="integer >= 0"):
        model.prefix_cache.keep_rows(-1)


@pytest.mark.parametrize("name, mb, stored", [("batched", 8, True), ("loop", 8, True), ("loop", 0, False)])
def test_engines_pass_estimator_feature_cache_mb_to_the_store(name, mb, stored):
    """``estimator.feature_cache_mb`` bounds the store on the loop path: the loop engine's and the batched engine's
    fallback (BERT does not trace) both hand it to the model; 0 turns it off."""
    model, _ = _pair()
    x = _sentences(4, 3)
    engine = make_engine(name, feature_cache_mb=mb)
    params = select_parameters(model, HEAD)
    engine(model, params, x, torch.arange(4) % 2, np.arange(1, 4, dtype=np.uint64), 1e-2)
    assert bool(model.prefix_cache.rows) == stored
    assert model.prefix_cache.max_row_bytes == mb * 2**20


def test_efficientnet_rows_stack_like_the_batch():
    """EfficientNet-Lite's stages keep one image's state per row (BatchNorm frozen: no row depends on another)."""
    torch.manual_seed(0)  # one model (its BN statistics are not in a state dict), the cache set aside for the reference
    model = build_model("efficientnet_tiny", in_channels=3, num_classes=10, image_size=32).eval()
    cache = model.prefix_cache
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.arange(4) % 10
    seeds = np.arange(1, 4, dtype=np.uint64)
    params = select_parameters(model, HEAD)
    for batch in (x, x.flip(0)):
        model.prefix_cache = cache
        got = loss_differences(model, params, batch, y, seeds, 1e-2, row_cache_bytes=1 << 24)
        model.prefix_cache = None
        ref = loss_differences(model, params, batch, y, seeds, 1e-2)
        np.testing.assert_allclose(got, ref, atol=2e-5, rtol=0)
    assert cache.row_misses == 4 and cache.row_hits == 4
