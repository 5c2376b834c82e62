"""Every bad command line fails fast with ONE line naming the problem, never a traceback (issue 17 item 3).

Each case is a command a careless user (or a script with a bug) could type: bad ``--set`` keys and values,
sizes that would run for months or allocate terabytes, integers that overflow, files that are not what the
flag expects, run directories that would mix. ``baffle.cli.main`` must return non-zero and print exactly one
line on stderr, ``baffle: error: ...``, containing the named fragment (the key, the file or the directory).
"""

from __future__ import annotations

import io
import pathlib
from pathlib import Path

import pytest
import torch

from baffle import cli
from baffle.testing import tiny

# first on the command line: a case's own --set items come later and win
BASE = ["--set", "data.name=synthetic", "--set", "model.name=mlp", "--set", "run.rounds=1", "--set", "run.threads=1",
        "--no-progress"]


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _files(d: Path) -> dict[str, Path]:
    f = {}
    f["text"] = d / "notes.txt"
    f["text"].write_text("not weights\n")
    f["empty"] = d / "empty.pt"
    f["empty"].write_bytes(b"")
    f["dir"] = d / "a_dir"
    f["dir"].mkdir()
    f["wrong_model"] = d / "other_model.pt"
    torch.save({"conv.weight": torch.zeros(3)}, f["wrong_model"])
    f["evil"] = d / "evil.pt"
    buf = io.BytesIO()
    torch.save({"w": _Payload(d / "PWNED")}, buf)
    f["evil"].write_bytes(buf.getvalue())
    f["bad_toml"] = d / "bad.toml"
    f["bad_toml"].write_text("[run\nrounds = = 3\n")
    f["binary"] = d / "binary.toml"
    f["binary"].write_bytes(b"\xff\xfe\x00garbage\x80")
    f["unknown_section"] = d / "unknown.toml"
    f["unknown_section"].write_text("[nosuch]\nx = 1\n")
    f["wrong_type"] = d / "wrongtype.toml"
    f["wrong_type"].write_text('[estimator]\nK = "many"\n')
    f["huge_int"] = d / "hugeint.toml"
    f["huge_int"].write_text("[run]\nseed = 9223372036854775807\n[estimator]\nK = 9223372036854775807\n")
    f["regular"] = d / "results.csv"
    f["regular"].write_text("a,b\n")
    f["busy"] = d / "busy"
    f["busy"].mkdir()
    (f["busy"] / "thesis.tex").write_text("x")
    f["no_config"] = d / "no_config_run"
    f["no_config"].mkdir()
    f["ckpt_dir"] = d / "ckpt_is_dir"
    f["ckpt_dir"].mkdir()
    (f["ckpt_dir"] / "config.toml").write_text(tiny(2).to_toml())
    (f["ckpt_dir"] / "checkpoint.pt").mkdir()
    f["bad_run_cfg"] = d / "bad_run_cfg"
    f["bad_run_cfg"].mkdir()
    (f["bad_run_cfg"] / "config.toml").write_text("[estimator\n")
    f["bad_sweep"] = d / "sweep.toml"
    f["bad_sweep"].write_text("out = 3\n[grid]\nestimator.K = 5\n")
    return f


def S(*items: str) -> list[str]:
    out = []
    for it in items:
        out += ["--set", it]
    return out


# (case id, argv builder taking the files and an output dir, fragment the one-line message must contain;
# "{name}" stands for the path of files[name])
CASES = [
    ("K_1e7", lambda f, o: ["run", *BASE, *S("estimator.K=1e7"), "--out", o], "estimator.K"),
    ("K_2pow70", lambda f, o: ["run", *BASE, *S(f"estimator.K={2**70}"), "--out", o], "estimator.K"),
    ("seed_1e30", lambda f, o: ["run", *BASE, *S("run.seed=1e30"), "--out", o], "run.seed"),
    ("image_2000", lambda f, o: ["run", *BASE, *S("data.image_size=2000"), "--out", o], "data.image_size"),
    ("image_100000", lambda f, o: ["run", *BASE, *S("data.image_size=100000"), "--out", o], "data.image_size"),
    ("K_zero", lambda f, o: ["run", *BASE, *S("estimator.K=0"), "--out", o], "estimator.K"),
    ("K_negative", lambda f, o: ["run", *BASE, *S("estimator.K=-5"), "--out", o], "estimator.K"),
    ("K_text", lambda f, o: ["run", *BASE, *S("estimator.K=abc"), "--out", o], "estimator.K"),
    ("K_nan", lambda f, o: ["run", *BASE, *S("estimator.K=nan"), "--out", o], "estimator.K"),
    ("lr_inf", lambda f, o: ["run", *BASE, *S("optim.lr=inf"), "--out", o], "optim.lr"),
    ("lr_1e400", lambda f, o: ["run", *BASE, *S("optim.lr=1e400"), "--out", o], "optim.lr"),
    ("unknown_section", lambda f, o: ["run", *BASE, *S("nosuch.key=1"), "--out", o], "nosuch"),
    ("unknown_key", lambda f, o: ["run", *BASE, *S("estimator.nosuch=1"), "--out", o], "estimator.nosuch"),
    ("set_no_equals", lambda f, o: ["run", *BASE, *S("estimator.K"), "--out", o], "estimator.K"),
    ("set_empty_key", lambda f, o: ["run", *BASE, *S("=5"), "--out", o], "section.key"),
    ("set_no_section", lambda f, o: ["run", *BASE, *S("K=5"), "--out", o], "'K'"),
    ("bad_method", lambda f, o: ["run", *BASE, *S("run.method=nope"), "--out", o], "run.method"),
    ("bad_dataset", lambda f, o: ["run", *BASE, *S("data.name=imagenet"), "--out", o], "data.name"),
    ("bad_model", lambda f, o: ["run", *BASE, *S("model.name=resnet999"), "--out", o], "model.name"),
    ("clients_per_round_0", lambda f, o: ["run", *BASE, *S("federation.clients_per_round=0"), "--out", o], "federation.clients_per_round"),
    ("clients_per_round_1e30", lambda f, o: ["run", *BASE, *S("federation.clients_per_round=1e30"), "--out", o], "federation.clients_per_round"),
    ("num_clients_1e12", lambda f, o: ["run", *BASE, *S("data.num_clients=1e12"), "--out", o], "data.num_clients"),
    ("num_clients_over_samples", lambda f, o: ["run", *BASE, *S("data.num_clients=100000"), "--out", o], "data.num_clients"),
    ("rounds_1e9", lambda f, o: ["run", *BASE, *S("run.rounds=1e9"), "--out", o], "run.rounds"),
    ("rounds_years", lambda f, o: ["run", *BASE, *S("run.rounds=10000000", "estimator.K=100000"), "--out", o], "run.rounds"),
    ("batch_1e8", lambda f, o: ["run", *BASE, *S("federation.batch_size=1e8"), "--out", o], "federation.batch_size"),
    ("betas_three", lambda f, o: ["run", *BASE, *S("optim.betas=[1,2,3]"), "--out", o], "optim.betas"),
    ("milestones_text", lambda f, o: ["run", *BASE, *S("optim.milestones=[a]"), "--out", o], "optim.milestones"),
    ("classes_out_of_range", lambda f, o: ["run", *BASE, *S("data.classes=[99]"), "--out", o], "99"),
    ("sigma_negative", lambda f, o: ["run", *BASE, *S("estimator.sigma=-1"), "--out", o], "estimator.sigma"),
    ("eval_every_0", lambda f, o: ["run", *BASE, *S("run.eval_every=0"), "--out", o], "run.eval_every"),
    ("trim_0.9", lambda f, o: ["run", *BASE, *S("federation.trim_fraction=0.9"), "--out", o], "federation.trim_fraction"),
    ("central_dp_median", lambda f, o: ["run", *BASE, *S("privacy.mode=central", "federation.aggregator=median"), "--out", o], "privacy.mode"),
    ("fuse_maybe", lambda f, o: ["run", *BASE, *S("estimator.fuse_clients=maybe"), "--out", o], "estimator.fuse_clients"),
    ("trainable_no_match", lambda f, o: ["run", *BASE, *S("model.trainable=[nomatch*]"), "--out", o], "nomatch*"),
    ("seed_pool_not_multiple", lambda f, o: ["run", *BASE, *S("estimator.seed_pool=7"), "--out", o], "estimator.seed_pool"),
    ("checkpoint_every_negative", lambda f, o: ["run", *BASE, *S("run.checkpoint_every=-1"), "--out", o], "run.checkpoint_every"),
    ("lora_rank_1e9", lambda f, o: ["run", *BASE, *S("model.lora_rank=1e9"), "--out", o], "model.lora_rank"),
    ("max_memory_1e12", lambda f, o: ["run", *BASE, *S("estimator.max_memory_mb=1e12"), "--out", o], "estimator.max_memory_mb"),
    ("threads_negative", lambda f, o: ["run", *BASE, *S("run.threads=-1"), "--out", o], "run.threads"),
    ("cifar_without_root", lambda f, o: ["run", *BASE, *S("data.name=cifar10"), "--out", o], "data.root"),
    ("cifar_missing_root", lambda f, o: ["run", *BASE, *S("data.name=cifar10", "data.root=/nonexistent/cifar"), "--out", o], "/nonexistent/cifar"),
    ("init_missing", lambda f, o: ["run", *BASE, "--init", "/nonexistent/w.pt", "--out", o], "/nonexistent/w.pt"),
    ("init_directory", lambda f, o: ["run", *BASE, "--init", str(f["dir"]), "--out", o], "{dir}"),
    ("init_text_file", lambda f, o: ["run", *BASE, "--init", str(f["text"]), "--out", o], "{text}"),
    ("init_empty_file", lambda f, o: ["run", *BASE, "--init", str(f["empty"]), "--out", o], "{empty}"),
    ("init_wrong_model", lambda f, o: ["run", *BASE, "--init", str(f["wrong_model"]), "--out", o], "do not fit"),
    ("init_pickle_payload", lambda f, o: ["run", *BASE, "--init", str(f["evil"]), "--out", o], "{evil}"),
    ("init_a_toml", lambda f, o: ["run", *BASE, "--init", str(f["bad_toml"]), "--out", o], "{bad_toml}"),
    ("out_regular_file", lambda f, o: ["run", *BASE, "--out", str(f["regular"])], "{regular}"),
    ("out_below_a_file", lambda f, o: ["run", *BASE, "--out", str(f["regular"] / "sub")], "{regular}"),
    ("out_busy_dir", lambda f, o: ["run", *BASE, "--out", str(f["busy"]), "--overwrite"], "{busy}"),
    ("resume_missing", lambda f, o: ["run", "--resume", "/nonexistent/run", "--no-progress"], "/nonexistent/run"),
    ("resume_a_file", lambda f, o: ["run", "--resume", str(f["regular"]), "--no-progress"], "{regular}"),
    ("resume_no_config", lambda f, o: ["run", "--resume", str(f["no_config"]), "--no-progress"], "config.toml"),
    ("resume_ckpt_is_dir", lambda f, o: ["run", "--resume", str(f["ckpt_dir"]), "--no-progress"], "checkpoint.pt"),
    ("resume_bad_config", lambda f, o: ["run", "--resume", str(f["bad_run_cfg"]), "--no-progress"], "config.toml"),
    ("resume_with_config", lambda f, o: ["run", "--resume", str(f["ckpt_dir"]), "--config", str(f["bad_toml"])], "--resume"),
    ("resume_set_unsafe", lambda f, o: ["run", "--resume", str(f["ckpt_dir"]), *S("estimator.K=5")], "estimator.K"),
    ("resume_and_overwrite", lambda f, o: ["run", "--resume", str(f["ckpt_dir"]), "--overwrite"], "--overwrite"),
    ("config_missing", lambda f, o: ["run", "--config", "/nonexistent/c.toml", "--out", o], "/nonexistent/c.toml"),
    ("config_malformed", lambda f, o: ["run", "--config", str(f["bad_toml"]), "--out", o], "{bad_toml}"),
    ("config_directory", lambda f, o: ["run", "--config", str(f["dir"]), "--out", o], "{dir}"),
    ("config_binary", lambda f, o: ["run", "--config", str(f["binary"]), "--out", o], "{binary}"),
    ("config_unknown_section", lambda f, o: ["run", "--config", str(f["unknown_section"]), "--out", o], "nosuch"),
    ("config_wrong_type", lambda f, o: ["run", "--config", str(f["wrong_type"]), "--out", o], "estimator.K"),
    ("config_int64_max_K", lambda f, o: ["run", "--config", str(f["huge_int"]), "--out", o, "--no-progress"], "estimator.K"),
    ("unknown_command", lambda f, o: ["frobnicate"], "frobnicate"),
    ("no_command", lambda f, o: [], "command"),
    ("unknown_flag", lambda f, o: ["run", "--bogus"], "--bogus"),
    ("set_without_value", lambda f, o: ["run", "--set"], "--set"),
    ("compare_missing", lambda f, o: ["compare", "/nonexistent/run"], "/nonexistent/run"),
    ("sweep_missing", lambda f, o: ["sweep", "/nonexistent/s.toml"], "/nonexistent/s.toml"),
    ("sweep_malformed", lambda f, o: ["sweep", str(f["bad_sweep"]), "--dry-run"], "out"),
    ("convert_without_flag", lambda f, o: ["convert-checkpoint", str(f["evil"])], "--trust-pickle"),
    ("convert_not_legacy", lambda f, o: ["convert-checkpoint", str(f["evil"]), "--trust-pickle"], "{evil}"),
]


@pytest.fixture(autouse=True)
def _never_train(monkeypatch):
    """A case the CLI wrongly accepts fails at once instead of training."""
    from baffle.sim.loop import Simulation

    def refuse(self):
        raise RuntimeError("accepted: this bad input would have started training")

    monkeypatch.setattr(Simulation, "run", refuse)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return _files(tmp_path_factory.mktemp("fuzz"))


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_fails_with_one_line_naming_the_problem(case, files, tmp_path, capsys):
    name, argv, fragment = case
    fragment = fragment.format(**{k: str(v) for k, v in files.items()})
    code = cli.main(argv(files, str(tmp_path / "out")))
    out = capsys.readouterr()
    err = out.err.strip()
    assert code != 0, f"{name} was accepted"
    assert len(err.splitlines()) == 1, f"{name}: {len(err.splitlines())} lines:\n{err}"
    assert err.startswith("baffle: error:") and "Traceback" not in err and "internal error" not in err, err
    assert fragment in err, f"{name}: {fragment!r} not in {err!r}"
    assert not (files["evil"].parent / "PWNED").exists()
    assert not (tmp_path / "out" / "metrics.jsonl").exists()  # refused before any work


def test_there_are_at_least_48_cases():
    assert len(CASES) >= 48


# ---- random overrides: accepted, or refused in one line naming the key -----------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from baffle.config import Config  # noqa: E402

_KEYS = [f"{s}.{k}" for s in Config.sections() for k in getattr(Config(), s).__dataclass_fields__]
_values = st.one_of(
    st.integers(-(2**80), 2**80).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["1e30", "1e7", "-1", "0", "2000", "true", "maybe", "[1,2,3]", "[]", "[a]", "", "abc", "1e-400"]),
    st.text(max_size=8),
)


class _Accepted(BaseException):
    pass


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=st.lists(st.tuples(st.sampled_from(_KEYS), _values), min_size=1, max_size=3))
def test_random_overrides_are_accepted_or_refused_in_one_line(items, monkeypatch, capsys, tmp_path):
    """What reaches the simulator is a valid config; everything else is one line, no traceback."""
    import baffle.sim.loop

    class Stub:
        def __init__(self, *a, **k):
            raise _Accepted()

    monkeypatch.setattr(baffle.sim.loop, "Simulation", Stub)
    argv = ["run", "--set", "data.name=synthetic", "--out", str(tmp_path / "o"), "--no-progress"]
    for key, value in items:
        argv += ["--set", f"{key}={value}"]
    capsys.readouterr()
    try:
        code = cli.main(argv)
    except _Accepted:
        return
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("baffle: error:") and len(err.splitlines()) == 1, (argv, err)
