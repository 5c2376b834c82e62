"""Forward-only fine-tuning: a pretrained checkpoint loads, the trainable filter / LoRA adapters freeze what
they should (bit-identical after rounds), and accuracy on a shifted task improves."""

import sys
from pathlib import Path

import pytest
import torch

from baffle.records import checkpoint
from baffle.adapters import add_adapters, merged_state_dict
from baffle.config import Config, ConfigError
from baffle.models import build_model
from baffle.sim.loop import Simulation
from baffle.sim.factory import build_model_for, load_data
from baffle.sim.evaluate import evaluate

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))
from pretrain import pretrain  # noqa: E402

BASE = ["data.name=synthetic", "data.image_size=8", "model.name=mlp", "run.threads=1", "data.train_subset=1000",
        "data.test_subset=300", "data.eval_train_samples=100"]
FT = ["data.classes=[5,6,7,8,9]", "estimator.engine=loop", "estimator.K=20", "estimator.sigma=1e-2", "data.num_clients=4",
      "federation.batch_size=16", "run.eval_every=10", "run.checkpoint_every=0", "optim.lr=0.05", "optim.ema_decay=0",
      "optim.cosine=false"]  # pinned: the defaults are tuned for the long default run


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def source_ckpt(tmp_path_factory):
    """An MLP pretrained with backprop on synthetic classes 0-4 (a 5-way task)."""
    cfg = Config()
    cfg.apply_overrides(BASE + ["data.classes=[0,1,2,3,4]"])
    model, info = pretrain(cfg, 150)
    assert info["source_test_acc"] > 0.9 and info["num_classes"] == 5
    path = tmp_path_factory.mktemp("ckpt") / "source.pt"
    torch.save(model.state_dict(), path)
    return path


def ft_config(ckpt, *extra, rounds=30):
    cfg = Config()
    cfg.apply_overrides(BASE + FT + [f"model.init={ckpt}", f"run.rounds={rounds}", *extra])
    return cfg.validate()


def test_checkpoint_loads_into_the_target_model(source_ckpt):
    cfg = ft_config(source_ckpt)
    train, _ = load_data(cfg)
    assert train.num_classes == 5 and int(train.y.max()) == 4
    model = build_model_for(cfg, train)
    saved = torch.load(source_ckpt, weights_only=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())


@pytest.mark.parametrize(
    "extra, trained",
    [
        (['model.trainable=["classifier.*"]'], lambda n: n.startswith("classifier.")),
        (['model.adapter=lora', 'model.lora_rank=2', 'model.trainable=["*lora_*"]'], lambda n: "lora_" in n),
    ],
)
def test_filter_freezes_everything_else_bit_identical(source_ckpt, tmp_path, extra, trained):
    cfg = ft_config(source_ckpt, *extra, rounds=4)
    sim = Simulation(cfg, None, progress=False)
    before = {k: v.clone() for k, v in sim.fed.strategy.model.state_dict().items()}
    sim.run()
    after = sim.fed.strategy.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(trained(k) for k in changed), changed
    frozen = [k for k in before if not trained(k)]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    if "lora" in str(extra):  # the base weights live on under parametrizations.*.original
        assert any(k.endswith("parametrizations.weight.original") for k in frozen)


def test_forward_only_finetuning_improves_accuracy(source_ckpt):
    cfg = ft_config(source_ckpt, 'model.trainable=["classifier.*"]')
    train, test = load_data(cfg)
    acc0, _ = evaluate(build_model_for(cfg, train), test)
    summary = Simulation(cfg, None, progress=False).run()
    assert acc0 < 0.4 and summary["final_test_acc"] > acc0 + 0.3, (acc0, summary["final_test_acc"])


def test_lora_starts_at_the_base_model_and_merges():
    torch.manual_seed(0)
    model = build_model("lenet")
    x = torch.randn(3, 1, 28, 28)
    ref = model(x)
    add_adapters(model, "lora", rank=2)
    assert torch.equal(model(x), ref)  # B = 0 at the start
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_()
    plain = build_model("lenet")
    plain.load_state_dict(merged_state_dict(model))
    assert torch.allclose(plain(x), model(x), atol=1e-5)
    n_lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert n_lora < sum(p.numel() for p in plain.parameters()) / 10


def test_lora_needs_its_parameters_trainable():
    cfg = Config()
    cfg.apply_overrides(["model.adapter=lora"])
    with pytest.raises(ConfigError, match="lora_"):
        cfg.validate()
