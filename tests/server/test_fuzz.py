"""Property-based fuzzing of what users and clients control: config files and upload messages.

Config: any TOML file is either a valid Config or a ConfigError naming the problem; never another exception.
Uploads: any Upload object or byte string is accepted or rejected with a known reason code; never an
exception; and a round whose uploads are all rejected leaves the global model bit-identical.
"""

import math
import string

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from baffle.config import Config, ConfigError
from baffle.protocol.messages import MessageError, Upload
from baffle.sim.rounds import RoundRunner
from baffle.sim.loop import Simulation
from baffle.server.validation import REJECT_CODES
from baffle.testing import tiny

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# ---- config files ---------------------------------------------------------------------------------

_REAL = {s: list(getattr(Config(), s).__dataclass_fields__) for s in Config.sections()}
_names = st.text(string.ascii_lowercase + "_", min_size=1, max_size=12)
_scalars = st.one_of(
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=20),
)
_values = st.one_of(_scalars, st.lists(_scalars, max_size=4))


def _toml_scalar(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_scalar(x) for x in v) + "]"
    return '"' + "".join(c if c.isprintable() and c not in '"\\' else f"\\u{ord(c):04x}" for c in v) + '"'


@st.composite
def toml_documents(draw) -> str:
    sections = draw(st.lists(st.one_of(st.sampled_from(sorted(_REAL)), _names), max_size=4, unique=True))
    lines = []
    for sec in sections:
        lines.append(f"[{sec}]")
        keys = draw(st.lists(st.one_of(st.sampled_from(_REAL.get(sec) or ["x"]), _names), max_size=5, unique=True))
        for key in keys:
            lines.append(f"{key} = {_toml_scalar(draw(_values))}")
    return "\n".join(lines) + "\n"


@FAST
@given(doc=toml_documents())
def test_any_toml_config_is_valid_or_a_config_error(tmp_path_factory, doc):
    path = tmp_path_factory.mktemp("cfg") / "c.toml"
    path.write_text(doc)
    try:
        Config.load(path).validate()
    except ConfigError as e:
        assert str(e)  # a message a person can read


@FAST
@given(raw=st.binary(max_size=200))
def test_random_bytes_as_config_file(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("cfg") / "c.toml"
    path.write_bytes(raw)
    try:
        Config.load(path).validate()
    except ConfigError:
        pass


@FAST
@given(key=st.text(max_size=30), value=st.text(max_size=30))
def test_any_command_line_override_is_applied_or_a_config_error(key, value):
    cfg = Config()
    try:
        cfg.apply_overrides([f"{key}={value}"])
        cfg.validate()
    except ConfigError:
        pass


def test_non_finite_numbers_are_config_errors():
    for key in ("data.alpha", "optim.clip", "optim.weight_decay", "optim.gamma", "estimator.sigma"):
        for bad in ("nan", "inf"):
            cfg = Config()
            cfg.set(key, bad)
            with pytest.raises(ConfigError, match=key):
                cfg.validate()


# ---- client messages ------------------------------------------------------------------------------

K = 16


@pytest.fixture(scope="module")
def sim():
    return Simulation(tiny(rounds=1, **{"optim.ema_decay": 0.0}), None, progress=False)


_ids = st.one_of(st.integers(-3, 8), st.sampled_from([None, "1", 1.0, True, np.int64(2)]))
_arrays = st.one_of(
    hnp.arrays(
        dtype=st.sampled_from([np.float32, np.float64, np.float16]),
        shape=st.sampled_from([(K,), (K - 1,), (K + 1,), (0,), (4, 4)]),
        elements=st.floats(allow_nan=True, allow_infinity=True, width=16),
    ),
    hnp.arrays(np.int32, (K,)),
    hnp.arrays(np.float32, (K,), elements=st.floats(-1e6, 1e6, width=32)),
    st.lists(st.floats(), max_size=K),
    st.none(),
)
uploads = st.builds(Upload, client_id=_ids, round=_ids, loss_diffs=_arrays, num_samples=st.one_of(_ids, st.integers(-5, 10**12)))


@FAST
@given(batch=st.lists(uploads, min_size=1, max_size=6))
def test_fuzzed_uploads_are_accepted_or_rejected_with_a_reason(sim, batch):
    ok, rejected = sim.fed.strategy.validate(batch, 0, {0, 1, 2, 3})
    assert len(ok) + len(rejected) == len(batch)
    assert all(r.code in REJECT_CODES and r.reason for r in rejected)
    for u in ok:
        assert u.loss_diffs.dtype == np.float32 and np.isfinite(u.loss_diffs).all() and 1 <= u.num_samples <= 16


@FAST
@given(batch=st.lists(uploads, min_size=1, max_size=6))
def test_fuzzed_round_never_corrupts_the_model(sim, batch, monkeypatch_module):
    monkeypatch_module.setattr(RoundRunner, "client_uploads", lambda self, sampled, r: list(batch))
    model = sim.fed.strategy.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = sim.runner.run_round(0)
    after = model.state_dict()
    if result.accepted < sim.fed.cfg.federation.min_clients:
        assert result.skipped
        assert all(torch.equal(before[k], after[k]) for k in before)  # bit-identical
    assert all(torch.isfinite(v).all() for v in after.values())


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


_wire_uploads = st.builds(
    lambda cid, r, n, xs: Upload(cid, r, np.array(xs, np.float32), n).to_bytes(),
    st.integers(0, 6),
    st.integers(0, 2),
    st.integers(0, 40),
    st.lists(st.floats(width=32), min_size=K - 1, max_size=K + 1),
)


@FAST
@given(raw=st.one_of(st.binary(max_size=120), _wire_uploads, _wire_uploads.map(lambda b: b[:-1])))
def test_random_bytes_decode_or_raise_message_error(raw):
    try:
        u = Upload.from_bytes(raw)
    except MessageError as e:
        assert str(e)
    else:
        assert len(raw) == 16 + 4 * len(u.loss_diffs)


@FAST
@given(
    blobs=st.lists(st.one_of(st.binary(max_size=100), _wire_uploads), min_size=1, max_size=5)
)
def test_wire_uploads_are_decoded_and_validated_never_raised(sim, blobs):
    strategy = sim.fed.strategy
    before = {k: v.clone() for k, v in strategy.model.state_dict().items()}
    ok, rejected = strategy.validate_bytes(blobs, 1, {0, 1, 2, 3})
    assert len(ok) + len(rejected) == len(blobs)
    assert all(r.code in REJECT_CODES for r in rejected)
    assert all(torch.equal(before[k], v) for k, v in strategy.model.state_dict().items())  # validation never steps
