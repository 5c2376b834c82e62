"""Text data (baffle.data.text): VADER read from its sdist layout, threshold, fixed split, tokenisation with the
model's tokenizer, domains as groups, data.partition=domain, the one-line install error, and a run end to end."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
import torch

tokenizers = pytest.importorskip("tokenizers", reason="pip install tokenizers==0.23.3 (scripts/setup.sh)")

from baffle.config import Config  # noqa: E402
from baffle.data import text  # noqa: E402
from baffle.data.partition import partition  # noqa: E402
from baffle.data.registry import load_dataset  # noqa: E402

WORDS = ["good", "bad", "great", "awful", "movie", "phone", "the", "was", "is", "not"]


def _tokenizer(path):
    """A small BERT-style WordPiece tokenizer ([PAD]=0, [CLS] ... [SEP]) saved as tokenizer.json."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + WORDS)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.save(str(path))
    return path


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def _fake_vader(tmp_path, per_domain: int = 20):
    """The sdist's layout (a tar.gz holding additional_resources/hutto_ICWSM_2014.tar.gz) with fake sentences:
    means cycle through -2, -0.3, 0.4, 1.5, so half of each domain is dropped by |mean| < 0.5."""
    files = {}
    for d, (domain, fname) in enumerate(text._FILES.items()):
        lines = []
        for i in range(per_domain):
            mean = (-2.0, -0.3, 0.4, 1.5)[i % 4]
            words = "the movie was good" if mean > 0 else "the phone is not great awful"
            lines.append(f"{d}_{i}\t{mean}\t{words} {('movie', 'phone', 'was')[i % 3]} caf\xe9")
        files[fname] = ("\n".join(lines) + "\n").encode("latin-1")
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as tf:
        for fname, data in files.items():
            _add(tf, f"hutto_ICWSM_2014/{fname}", data)
    sdist = tmp_path / text.VADER_SDIST
    with tarfile.open(sdist, "w:gz") as tf:
        _add(tf, "vaderSentiment-3.3.2/setup.py", b"")
        _add(tf, f"vaderSentiment-3.3.2/additional_resources/{text._INNER}", inner.getvalue())
    (tmp_path / "extracted").mkdir()
    for fname, data in files.items():
        (tmp_path / "extracted" / fname).write_bytes(data)
    return sdist


@pytest.fixture()
def fake(tmp_path, monkeypatch):
    monkeypatch.setenv("BAFFLE_CACHE", str(tmp_path / "cache"))
    return _fake_vader(tmp_path), _tokenizer(tmp_path / "tokenizer.json")


def test_threshold_split_tokens_and_domains(fake):
    sdist, tok = fake
    train = text.load_text_dataset("vader", split="train", root=sdist, tokenizer=tok)
    test = text.load_text_dataset("vader", split="test", root=sdist, tokenizer=tok)
    assert len(train) + len(test) == 4 * 10  # half of each domain has |mean| >= 0.5
    assert len(test) == 4 * 2  # 20% of each domain's 10 kept sentences
    for ds in (train, test):
        assert ds.x.dtype == torch.float32 and ds.x.shape[1:] == (2, 1, text.MAX_LENGTH)
        ids, mask = ds.x[:, 0, 0], ds.x[:, 1, 0]
        assert torch.all(ids[:, 0] == 2) and torch.equal(mask, (ids != 0).float())  # [CLS] first, mask = not [PAD]
        assert ds.classes == ("negative", "positive") and ds.num_classes == 2
        assert sorted(ds.groups.unique().tolist()) == [0, 1, 2, 3]
    assert np.bincount(test.groups.numpy()).tolist() == [2, 2, 2, 2]
    # positive sentences say "good", negative ones "awful"; tokens are the tokenizer's own ids
    good, awful = 4 + WORDS.index("good"), 4 + WORDS.index("awful")
    ids = train.x[:, 0, 0]
    assert torch.equal((ids == good).any(1), train.y == 1) and torch.equal((ids == awful).any(1), train.y == 0)
    # the same data from the inner archive and from the extracted folder; the disk cache gives it back equal
    text._load_vader.cache_clear()
    for root in (sdist.parent / "extracted", sdist):
        again = text.load_text_dataset("vader", split="train", root=root, tokenizer=tok)
        assert torch.equal(again.x, train.x) and torch.equal(again.y, train.y) and torch.equal(again.groups, train.groups)
    assert len(text.load_text_dataset("vader", root=sdist, tokenizer=tok, num_samples=5)) == 5


def test_missing_data_says_how_to_install_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("BAFFLE_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(text.TextDataNotFoundError) as e:
        text.vader_source()
    msg = str(e.value)
    assert "\n" not in msg and "scripts/setup.sh" in msg and "vaderSentiment==3.3.2" in msg
    with pytest.raises(FileNotFoundError, match="setup.sh"):
        load_dataset("vader", root=tmp_path / "nowhere")


def test_domain_partition_and_subsets_keep_groups(fake):
    sdist, tok = fake
    train = text.load_text_dataset("vader", root=sdist, tokenizer=tok)
    g = train.groups.numpy()
    parts = partition(train.y.numpy(), 4, "domain", groups=g, seed=0)
    assert [sorted(set(g[p])) for p in parts] == [[0], [1], [2], [3]]
    parts8 = partition(train.y.numpy(), 8, "domain", groups=g, seed=0)
    assert [set(g[p]) for p in parts8] == [{0}, {0}, {1}, {1}, {2}, {2}, {3}, {3}]
    assert np.array_equal(np.sort(np.concatenate(parts8)), np.arange(len(g)))
    with pytest.raises(ValueError, match="multiple of 4"):
        partition(train.y.numpy(), 6, "domain", groups=g)
    with pytest.raises(ValueError, match="groups"):
        partition(train.y.numpy(), 4, "domain")
    sub = train.subset(parts[2])
    assert torch.all(sub.groups == 2)


def test_config_checks_text_models_and_domain_partition():
    cfg = Config()
    cfg.apply_overrides(["data.name=vader", "model.name=minilm", "data.partition=domain", "data.num_clients=4"])
    cfg.validate()
    for bad, match in ((["data.name=mnist", "model.name=minilm"], "text models"),
                       (["data.name=vader", "model.name=lenet_small"], "text models"),
                       (["data.name=mnist", "data.partition=domain"], "domains")):
        c = Config()
        c.apply_overrides(bad)
        with pytest.raises(ValueError, match=match):
            c.validate()


def test_bert_tiny_federation_on_domain_clients(fake, monkeypatch):
    """baffle run's path end to end: data.name=vader, model.name=bert_tiny, one client per domain."""
    from baffle.sim.loop import Simulation

    sdist, tok = fake
    real = text.load_text_dataset
    monkeypatch.setattr(text, "load_text_dataset", lambda *a, **k: real(*a, **{**k, "tokenizer": tok}))
    cfg = Config()
    cfg.apply_overrides([f"data.root={sdist}", "data.name=vader", "model.name=bert_tiny", "data.partition=domain",
                         "data.num_clients=4", "run.rounds=2", "run.eval_every=2", "run.threads=1", "estimator.K=4",
                         "estimator.engine=loop", "federation.batch_size=4", "run.checkpoint_every=0",
                         'model.trainable=["classifier.*", "*norm.*"]'])
    sim = Simulation(cfg.validate(), None, progress=False)
    assert [set(c.data.groups[c.indices].tolist()) for c in sim.fed.clients] == [{0}, {1}, {2}, {3}]
    before = {k: v.clone() for k, v in sim.fed.strategy.model.state_dict().items()}
    summary = sim.run()
    after = sim.fed.strategy.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("classifier.") or "norm." in k for k in changed)
    assert 0.0 <= summary["final_test_acc"] <= 1.0


def test_real_vader_counts():
    """The installed VADER data (scripts/setup.sh): 19,459 sentences with |mean| >= 0.5 in four domains."""
    try:
        text.vader_source()
        from baffle.nlp.pretrained import minilm_dir

        minilm_dir()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    train, test = load_dataset("vader"), load_dataset("vader", split="test")
    assert len(train) + len(test) == 19_459
    counts = np.bincount(np.concatenate([train.groups.numpy(), test.groups.numpy()]))
    assert counts.tolist() == [10_072, 3_432, 2_970, 2_985]
    assert 0.4 < float(train.y.float().mean()) < 0.6


def test_head_only_text_run_resumes_bit_exactly_from_a_subset_checkpoint(fake, monkeypatch, tmp_path):
    """A head-only bert_tiny run checkpoints the head (+ EMA, optimizer, frozen fingerprint), not the encoder, and
    resuming it gives the uninterrupted run's weights and metrics exactly (evaluation through the head cache)."""
    import json

    from baffle.records import checkpoint
    from baffle.records.metrics import read_metrics
    from baffle.sim.loop import CHECKPOINT_NAME, Simulation
    from baffle.testing.crash import interrupted_run

    sdist, tok = fake
    real = text.load_text_dataset
    monkeypatch.setattr(text, "load_text_dataset", lambda *a, **k: real(*a, **{**k, "tokenizer": tok}))

    def config(rounds: int) -> Config:
        cfg = Config()
        cfg.apply_overrides([f"data.root={sdist}", "data.name=vader", "model.name=bert_tiny", "data.partition=domain",
                             "data.num_clients=4", f"run.rounds={rounds}", "run.eval_every=1", "run.checkpoint_every=2",
                             "run.threads=1", "estimator.K=4", "estimator.engine=loop", "federation.batch_size=4",
                             'model.trainable=["classifier.*"]'])
        return cfg.validate()

    whole = Simulation(config(4), tmp_path / "whole", progress=False)
    whole.run()
    state = checkpoint.load(tmp_path / "whole" / CHECKPOINT_NAME)["server"]
    assert set(state["model"]) == {"classifier.weight", "classifier.bias"} and len(state["frozen_sha256"]) == 64
    interrupted_run(config(4), tmp_path / "split", at_round=3)  # Ctrl-C in round 4: the round-2 checkpoint stays
    resumed = Simulation(config(4), tmp_path / "split", progress=False)
    assert resumed.resume_or_start() and resumed.start_round == 2
    resumed.run()
    for a, b in zip(whole.fed.strategy.model.state_dict().values(), resumed.fed.strategy.model.state_dict().values()):
        assert torch.equal(a, b)
    strip = lambda rows: [json.dumps({k: v for k, v in r.items() if k not in ("wall_s", "sim_wait_s")}) for r in rows]
    assert strip(read_metrics(tmp_path / "whole")) == strip(read_metrics(tmp_path / "split"))


def test_head_only_text_run_on_flower_matches_baffle_run_and_evaluates_the_encoder_once(fake, monkeypatch, tmp_path):
    """The Flower server evaluates a frozen-encoder text run through the head cache, as `baffle run` does: the
    encoder runs once per evaluated data set (not at every evaluation) and every metrics row equals the
    in-process run's."""
    pytest.importorskip("flwr")
    import json
    import tomllib
    from pathlib import Path

    from baffle.flower.config import parse_run_config
    from baffle.flower.inmemory import run_inmemory
    from baffle.records.metrics import read_metrics
    from baffle.sim.evaluate import HeadCache
    from baffle.sim.loop import Simulation

    sdist, tok = fake
    real = text.load_text_dataset
    monkeypatch.setattr(text, "load_text_dataset", lambda *a, **k: real(*a, **{**k, "tokenizer": tok}))
    computed = []  # one flag per call: True when the encoder ran (a miss), False when the cache answered
    features = HeadCache.features

    def counting(self, model, data, batches):
        before = [e[2] for e in self._entries]
        out = features(self, model, data, batches)
        computed.append(not any(out is f for f in before))
        return out

    monkeypatch.setattr(HeadCache, "features", counting)
    app = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    rc = {**app, "num-server-rounds": 4, "run-eval-every": 1, "run-threads": 1, "data-name": "vader", "data-root": str(sdist),
          "model-name": "bert_tiny", "estimator-k": 4, "estimator-engine": "loop",
          "federation-batch-size": 4, "model-trainable": "classifier.*", "result-dir": str(tmp_path / "flower")}
    run_inmemory(rc, 3)
    flower_rows = read_metrics(tmp_path / "flower")
    assert len(flower_rows) == 4 and computed.count(True) == 2 and len(computed) == 8  # 2 data sets x 4 evaluations
    cfg, _ = parse_run_config(rc)
    cfg.data.num_clients = 3
    Simulation(cfg, tmp_path / "sim", progress=False).run()
    keep = ("round", "test_acc", "test_loss", "train_loss", "total_forward_passes", "download_bytes_per_client")
    strip = lambda rows: [json.dumps({k: r[k] for k in keep}) for r in rows]  # noqa: E731
    assert strip(flower_rows) == strip(read_metrics(tmp_path / "sim"))
