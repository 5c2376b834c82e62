"""The torch-free protocol layer: importable without torch, and the one home of what both clients share."""

import json
import subprocess
import sys

import numpy as np
import pytest

from baffle.protocol import streams
from baffle.protocol.layout import FlatLayout, select_names
from baffle.protocol.sampler import BatchSampler
from baffle.protocol.schemes import SCHEMES, check_scheme, forward_passes

TORCH_FREE = [
    "baffle.protocol.layout",
    "baffle.protocol.messages",
    "baffle.protocol.noise",
    "baffle.protocol.onnx_names",
    "baffle.protocol.sampler",
    "baffle.protocol.schemes",
    "baffle.protocol.streams",
    "baffle.onnx_session",
    "baffle.onnx_client",
    "baffle.onnx_quant",
]


def test_protocol_and_onnx_client_import_no_torch():
    code = (
        "import importlib, json, sys\n"
        f"for m in {TORCH_FREE!r}:\n"
        "    if m.startswith('baffle.onnx'):\n"
        "        try:\n"
        "            importlib.import_module('onnxruntime')\n"
        "        except ImportError:\n"
        "            continue\n"
        "    importlib.import_module(m)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_select_names_keeps_order_and_refuses_a_pattern_that_matches_nothing():
    names = ["features.0.weight", "features.0.bias", "classifier.weight", "classifier.bias"]
    assert select_names(names) == names and select_names(names, []) == names
    assert select_names(names, ["classifier.*", "features.0.bias"]) == ["features.0.bias", "classifier.weight", "classifier.bias"]
    with pytest.raises(ValueError, match="matches no parameter"):
        select_names(names, ["classifer.*"])


def test_flat_layout_round_trips():
    w = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([7.0], np.float32), "c": np.zeros(2, np.float32)}
    layout = FlatLayout(["a", "b"], w)
    flat = layout.flatten(w)
    assert layout.n == 7 and flat.tolist() == [0, 1, 2, 3, 4, 5, 7]
    back = layout.unflatten(flat)
    assert set(back) == {"a", "b"} and np.array_equal(back["a"], w["a"])


def test_schemes():
    assert SCHEMES == ("forward", "central")
    assert forward_passes(10, "forward") == 11 and forward_passes(10, "central") == 20
    with pytest.raises(ValueError, match="unknown scheme"):
        check_scheme("backward")


def test_stream_values_are_frozen():
    """The tags are part of every published result: these are the values the call sites used before the registry."""
    assert (streams.DATA_SUBSET, streams.CLIENT_SEED, streams.TRAIN_PROBE, streams.CLIENT_SAMPLING) == (1, 2, 3, 4)
    assert (streams.ATTACKERS, streams.ATTACK_NOISE, streams.FAULTS, streams.DP_NOISE) == (7, 8, 9, 10)
    assert streams.client_seed(5, 3) == int(np.random.SeedSequence([5, 2, 3]).generate_state(1)[0])
    assert streams.rng(5, streams.FAULTS, 1, 2).random() == np.random.default_rng([5, 9, 1, 2]).random()
    assert streams.epoch_rng(11, 4).random() == np.random.default_rng([11, 4]).random()


def test_batch_sampler_epochs_cover_client_data() -> None:
    idx = np.arange(100, 147)  # 47 samples
    s = BatchSampler(idx, batch_size=10, seed=3)
    assert s.num_batches == 5
    epoch0 = [s.next_batch() for _ in range(5)]
    assert [len(b) for b in epoch0] == [10, 10, 10, 10, 7]
    assert np.array_equal(np.sort(np.concatenate(epoch0)), idx)
    epoch1 = list(s.epoch_batches())
    assert len(epoch1) == 5 and s.epoch == 1
    assert np.array_equal(np.sort(np.concatenate(epoch1)), idx)
    assert not np.array_equal(np.concatenate(epoch0), np.concatenate(epoch1))  # reshuffled

    dl = BatchSampler(idx, batch_size=10, seed=3, drop_last=True)
    assert [len(b) for b in dl.epoch_batches()] == [10] * 4
    tiny = BatchSampler(np.array([4, 2]), batch_size=32, seed=0)
    assert sorted(tiny.next_batch().tolist()) == [2, 4]
    with pytest.raises(ValueError):
        BatchSampler(np.array([], dtype=np.int64), 4, 0)
    with pytest.raises(ValueError):
        BatchSampler(idx, 0, 0)


def test_batch_sampler_resume_is_exact() -> None:
    idx = np.random.default_rng(0).choice(10_000, size=83, replace=False)
    ref = BatchSampler(idx, batch_size=16, seed=11)
    reference = [ref.next_batch() for _ in range(30)]

    first = BatchSampler(idx, batch_size=16, seed=11)
    drawn = [first.next_batch() for _ in range(13)]
    state = json.loads(json.dumps(first.state_dict()))  # survives a JSON checkpoint
    resumed = BatchSampler(idx, batch_size=16, seed=11)
    resumed.load_state_dict(state)
    drawn += [resumed.next_batch() for _ in range(17)]
    assert all(np.array_equal(a, b) for a, b in zip(reference, drawn))

    # Mixed epoch_batches / next_batch use resumes the same way.
    a = BatchSampler(idx, batch_size=16, seed=11)
    a.next_batch()
    rest_a = list(a.epoch_batches())
    b = BatchSampler(idx, batch_size=16, seed=11)
    b.next_batch()
    c = BatchSampler(idx, batch_size=16, seed=11)
    c.load_state_dict(b.state_dict())
    assert all(np.array_equal(x, y) for x, y in zip(rest_a, c.epoch_batches()))

    with pytest.raises(ValueError, match="batch_size"):
        BatchSampler(idx, batch_size=8, seed=11).load_state_dict(state)
    with pytest.raises(ValueError, match="seed"):
        BatchSampler(idx, batch_size=16, seed=12).load_state_dict(state)
