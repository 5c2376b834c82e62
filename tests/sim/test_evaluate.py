"""sim.evaluate on text models: length-ordered batches give today's numbers (to float rounding), and the head
cache of a frozen-encoder run gives the very same bits as evaluating without it, recomputing when the encoder moves;
the same cache for the random-feature image models (rf_white, rf_cnn) over their frozen convolution."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from baffle.data.dataset import Dataset
from baffle.models import build_model
from baffle.nlp.pretrained import build_text_model
from baffle.sim.evaluate import HeadCache, evaluate, is_text_model, probe_loss


def _sentences(n: int, seed: int = 0, length: int = 64) -> Dataset:
    """Random token ids of VADER's shape [N, 2, 1, L] with sentence lengths from 3 to ``length`` tokens."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, length + 1, (n,), generator=g)
    mask = (torch.arange(length)[None, :] < lengths[:, None]).float()
    ids = torch.randint(4, 30522, (n, length), generator=g).float() * mask
    x = torch.stack([ids, mask], 1)[:, :, None, :].contiguous()
    return Dataset(x, torch.randint(0, 2, (n,), generator=g), 2, "vader")


@pytest.fixture()
def model():
    torch.manual_seed(0)
    m = build_text_model("bert_tiny", 2)
    with torch.no_grad():  # a head that separates something, so accuracy is not a constant
        m.classifier.weight.normal_(0, 3.0)
    return m.eval()


@torch.inference_mode()
def _reference(model: torch.nn.Module, data: Dataset) -> tuple[float, float]:
    """What evaluate computed before: the model's own forward in slices of 1,000 in dataset order."""
    correct, loss = 0, 0.0
    for s in range(0, len(data), 1000):
        logits = model(data.x[s : s + 1000])
        loss += float(F.cross_entropy(logits, data.y[s : s + 1000], reduction="sum"))
        correct += int((logits.argmax(1) == data.y[s : s + 1000]).sum())
    return correct / len(data), loss / len(data)


def test_length_ordered_batches_match_the_plain_forward(model):
    data = _sentences(300)
    assert is_text_model(model)
    acc, loss = evaluate(model, data)
    ref_acc, ref_loss = _reference(model, data)
    assert acc == ref_acc and 0.2 < acc < 0.8
    assert loss == pytest.approx(ref_loss, rel=1e-6, abs=0)


def test_head_cache_gives_the_same_bits_and_computes_features_once(model, monkeypatch):
    test, probe = _sentences(200, seed=1), _sentences(130, seed=2)
    plain = (evaluate(model, test), probe_loss(model, probe))
    cache = HeadCache(["classifier.weight", "classifier.bias"])
    assert cache.applies(model)
    calls = []
    real = type(model).head_input
    monkeypatch.setattr(type(model), "head_input", lambda self, x: calls.append(len(x)) or real(self, x))
    first = (evaluate(model, test, cache=cache), probe_loss(model, probe, cache=cache))
    assert first == plain and sum(calls) == 330
    with torch.no_grad():  # the head moves (what a head-only run trains): the cached inputs stay valid
        model.classifier.bias[0] += 0.5
    moved = (evaluate(model, test, cache=cache), probe_loss(model, probe, cache=cache))
    assert sum(calls) == 330  # nothing recomputed
    monkeypatch.undo()
    assert moved == (evaluate(model, test), probe_loss(model, probe)) and moved != first


def test_head_cache_recomputes_when_the_encoder_changes(model):
    data = _sentences(150, seed=3)
    cache = HeadCache(["classifier.weight", "classifier.bias"])
    before = evaluate(model, data, cache=cache)
    with torch.no_grad():
        model.bert.blocks[0].value.weight[:, :8] += 0.5  # in place: the fingerprint's version key sees it
    after = evaluate(model, data, cache=cache)
    assert after == evaluate(model, data) and after != before


def test_head_cache_is_not_used_when_the_encoder_trains(model, monkeypatch):
    cache = HeadCache(["classifier.weight", "bert.blocks.1.ffn_norm.bias"])
    assert not cache.applies(model)
    monkeypatch.setattr(HeadCache, "features", lambda *a: pytest.fail("cache used for a run that trains the encoder"))
    data = _sentences(50, seed=4)
    assert evaluate(model, data, cache=cache) == evaluate(model, data)


@pytest.mark.parametrize("name, channels, size", [("rf_white", 3, 32), ("rf_cnn", 1, 28)])
def test_head_cache_of_a_random_feature_model_gives_the_same_bits_and_convolves_once(name, channels, size, monkeypatch):
    """A classifier-only rf run evaluates its frozen convolution's output once per dataset (the slices of 1,000 the
    plain evaluation uses, so the same bits), and again when the convolution changes."""
    torch.manual_seed(0)
    model = build_model(name, in_channels=channels, num_classes=10, image_size=size).eval()
    with torch.no_grad():
        model.classifier.weight.normal_(0, 0.5)
    g = torch.Generator().manual_seed(1)
    data = Dataset(torch.randn(1200, channels, size, size, generator=g), torch.randint(0, 10, (1200,), generator=g), 10, name)
    plain = evaluate(model, data)
    assert plain == _reference(model, data)
    cache = HeadCache(["classifier.weight", "classifier.bias"])
    assert cache.applies(model) and not HeadCache(["features.0.weight", "classifier.weight"]).applies(model)
    calls = []
    real = type(model).head_input
    monkeypatch.setattr(type(model), "head_input", lambda self, x: calls.append(len(x)) or real(self, x))
    assert evaluate(model, data, cache=cache) == plain and calls == [1000, 200]
    with torch.no_grad():
        model.classifier.bias[0] += 1.0
    moved = evaluate(model, data, cache=cache)
    assert len(calls) == 2 and moved != plain  # the head moved, the features were reused
    with torch.no_grad():
        model.features[0].weight.mul_(1.5)  # the frozen bottom changed: computed again
    assert evaluate(model, data, cache=cache)[1] != moved[1] and len(calls) == 4
    monkeypatch.undo()
    assert evaluate(model, data, cache=cache) == evaluate(model, data)
