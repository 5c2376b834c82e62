"""Loading a file never runs code (issue 17 item 1).

Every crafted file below carries a payload that, if anything unpickled it, would create a marker file. Each
is handed to every loader baffle has for files on disk (``load`` for ``--resume``, ``load_model_weights`` for
``--init``, ``convert_legacy`` under its explicit trust flag, and the CLI itself); each must be refused with
a CheckpointError (a one-line message naming the file) and the marker must not exist afterwards. A positive
control proves the payloads are live: plain ``pickle.loads`` does create the marker.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import pathlib
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from baffle import cli
from baffle.records import checkpoint as ck
from baffle.records import legacy
from baffle.testing import tiny


class Payload:
    """Unpickling this creates ``marker`` (what an attacker's ``os.system`` would do, observably)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _st(header: dict | bytes, body: bytes = b"") -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def _signed(payload: bytes, key: bytes) -> bytes:
    mac = hmac.new(key, ck.MAGIC + payload, hashlib.sha256).digest()
    return ck.MAGIC + hashlib.sha256(payload).digest() + mac + payload


def _tree_payload(tree_json: str, tensors: dict | None = None) -> bytes:
    from safetensors.torch import save

    return save(tensors or {}, metadata={"format": "baffle.checkpoint", "schema": ck.SCHEMA, "tree": tree_json})


def crafted_files(d: Path, marker: Path, key: bytes) -> dict[str, bytes]:
    """name -> bytes; each is malicious or malformed in its own way."""
    evil = Payload(marker)
    files: dict[str, bytes] = {}
    buf = io.BytesIO()
    torch.save({"weight": torch.zeros(2), "x": evil}, buf)
    files["torch_zip_with_pickle_payload.pt"] = buf.getvalue()
    buf = io.BytesIO()
    torch.save(evil, buf)
    files["torch_zip_payload_only.pt"] = buf.getvalue()
    buf = io.BytesIO()
    torch.save({"w": evil}, buf, _use_new_zipfile_serialization=False)
    files["torch_legacy_pickle.pt"] = buf.getvalue()
    files["raw_pickle.pt"] = pickle.dumps({"w": evil})
    files["raw_pickle_protocol0.pt"] = pickle.dumps(evil, protocol=0)
    old_payload = pickle.dumps({"round": 1, "server": {"model": evil}})
    files["old_baffle_header_pickle.pt"] = ck.LEGACY_MAGIC + hashlib.sha256(old_payload).digest() + old_payload
    buf = io.BytesIO()
    torch.save({"round": 1, "server": {"model": {"w": evil}}}, buf)
    files["old_baffle_header_torch_save.pt"] = ck.LEGACY_MAGIC + hashlib.sha256(buf.getvalue()).digest() + buf.getvalue()
    files["new_header_pickle_payload_signed.pt"] = _signed(pickle.dumps(evil), key)
    files["new_header_pickle_payload_forged_key.pt"] = _signed(pickle.dumps(evil), b"k" * 32)
    good = ck.dumps({"round": 1, "server": {"model": {"w": torch.ones(3)}, "ema": None}})
    files["valid_payload_forged_key.pt"] = _signed(good, b"x" * 32)
    files["safetensors_huge_header_len.safetensors"] = struct.pack("<Q", 2**63) + b"{}"
    files["safetensors_header_not_json.safetensors"] = _st(b"{not json" + pickle.dumps(evil))
    files["safetensors_header_is_pickle.safetensors"] = _st(pickle.dumps(evil))
    files["safetensors_bad_offsets.safetensors"] = _st({"w": {"dtype": "F32", "shape": [1000000], "data_offsets": [0, 4000000]}}, b"\0" * 16)
    files["safetensors_overlapping.safetensors"] = _st(
        {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12)
    files["safetensors_object_dtype.safetensors"] = _st({"w": {"dtype": "O", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8)
    files["safetensors_negative_shape.safetensors"] = _st({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4)
    files["safetensors_deep_header.safetensors"] = _st(b"[" * 100000 + b"]" * 100000)
    files["safetensors_huge_number_header.safetensors"] = _st(b'{"w": {"dtype": "F32", "shape": [' + b"9" * 100000 + b'], "data_offsets": [0, 4]}}', b"\0" * 4)
    files["safetensors_no_tensors.safetensors"] = _st({"__metadata__": {"format": "pt"}})
    files["bare_baffle_payload.safetensors"] = good  # a checkpoint payload stripped of its integrity header
    trees = {
        "huge_int": '{"round": ' + "9" * 100000 + "}",
        "nan_constant": '{"round": NaN}',
        "deep_nesting": '{"a": ' + "[" * 5000 + "]" * 5000 + "}",
        "unknown_tag": '{"round": {"__reduce__": ["os.system", "touch x"]}}',
        "object_ndarray": '{"a": {"__ndarray__": "t0", "dtype": "O"}}',
        "pickle_dtype": '{"a": {"__ndarray__": "t0", "dtype": "V8"}}',
        "missing_tensor": '{"a": {"__tensor__": "t99"}}',
        "bad_dict_pairs": '{"a": {"__dict__": [[1]]}}',
        "unhashable_key": '{"a": {"__dict__": [[[1, 2], 3]]}}',
        "np_overflow": '{"a": {"__np__": "<i8", "v": ' + "9" * 40 + "}}",
        "bad_float": '{"a": {"__float__": "__import__(\'os\')"}}',
        "not_json": "{'round': 1}",
        "top_level_list": "[1, 2, 3]",
    }
    for name, tree in trees.items():
        files[f"signed_tree_{name}.pt"] = _signed(_tree_payload(tree, {"t0": torch.zeros(1)}), key)
    wrong_schema = ck.dumps({"round": 1}).replace(ck.SCHEMA.encode(), b"baffle.checkpoint/9")
    files["signed_wrong_schema.pt"] = _signed(wrong_schema, key)
    files["npz_with_object_array.npz"] = _npz_object(evil)
    files["json_state.json"] = json.dumps({"weight": [1.0, 2.0]}).encode()
    files["text.txt"] = b"hello, these are not weights\n"
    files["empty.pt"] = b""
    files["truncated_new_header.pt"] = ck.MAGIC + b"\0" * 20
    return files


def _npz_object(evil) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, a=np.array([evil], dtype=object))
    return buf.getvalue()


@pytest.fixture
def crafted(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    key = ck.run_key(run, create=True)
    marker = tmp_path / "PWNED"
    paths = {}
    for name, data in crafted_files(run, marker, key).items():
        p = run / name
        p.write_bytes(data)
        paths[name] = p
    return paths, marker


def test_payloads_are_live_positive_control(tmp_path):
    marker = tmp_path / "PWNED"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()  # so the refusals below are refusals of real payloads


def _refused(fn, path: Path) -> str:
    with pytest.raises(ck.CheckpointError) as info:
        fn(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg, msg
    return msg


def test_no_crafted_file_executes_or_loads_through_any_loader(crafted, capsys):
    paths, marker = crafted
    loaders = {
        "load (--resume)": ck.load,
        "load_model_weights (--init)": ck.load_model_weights,
        "convert_legacy --trust-pickle": lambda p: legacy.convert_legacy(p, p.with_suffix(".conv"), trust_pickle=True),
    }
    refused = 0
    for name, path in paths.items():
        for loader in loaders.values():
            _refused(loader, path)
            refused += 1
            assert not marker.exists(), f"{name} executed its payload"
    assert len(paths) >= 40 and refused == 3 * len(paths)
    print(f"{len(paths)} crafted files x {len(loaders)} loaders: {refused} refusals, 0 executed")
    assert not list(paths["empty.pt"].parent.glob("*.conv"))


def test_crafted_files_through_the_cli_one_line_no_traceback(crafted, tmp_path, capsys):
    paths, marker = crafted
    base = ["--set", "data.name=synthetic", "--set", "model.name=mlp", "--set", "run.rounds=1", "--set", "run.threads=1",
            "--no-progress"]
    for i, (name, path) in enumerate(paths.items()):
        code = cli.main(["run", "--init", str(path), "--out", str(tmp_path / f"o{i}"), *base])
        err = capsys.readouterr().err.strip()
        assert code != 0 and len(err.splitlines()) == 1 and "Traceback" not in err and str(path) in err, (name, err)
        assert not marker.exists(), name
        assert not (tmp_path / f"o{i}" / "metrics.jsonl").exists()


def test_resume_with_a_malicious_checkpoint_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    from baffle.sim.loop import Simulation

    Simulation(tiny(2), out, progress=False).run()
    marker = tmp_path / "PWNED"
    buf = io.BytesIO()
    torch.save({"round": 1, "x": Payload(marker)}, buf)
    payload = buf.getvalue()
    for data in (payload, ck.LEGACY_MAGIC + hashlib.sha256(payload).digest() + payload,
                 _signed(payload, b"z" * 32), _signed(ck.dumps({"round": 1}), b"z" * 32)):
        (out / "checkpoint.pt").write_bytes(data)
        assert cli.main(["run", "--resume", str(out), "--no-progress"]) != 0
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(out / "checkpoint.pt") in err, err
        assert not marker.exists()


def test_round_trip_is_exact_and_typed(tmp_path):
    state = {
        "round": 7, "big": 2**200, "neg": -(2**70), "f": 0.1, "nan": float("nan"), "inf": float("-inf"), "none": None,
        "b": True, "s": "__not_a_tag__", "tuple": (0.9, 0.99), "list": [1, [2, (3,)]],
        "int_keys": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(4, 5)}},
        "__dunder_key": 1, "gen": torch.Generator().manual_seed(3).get_state(),
        "np": {"a": np.arange(5, dtype=np.uint32), "f64": np.float64(1 / 3), "i": np.int64(-5), "b": np.bool_(True)},
        "bf16": torch.randn(3).to(torch.bfloat16), "empty": torch.zeros(0, 3), "scalar": torch.tensor(5, dtype=torch.int64),
        "bitgen": np.random.default_rng(1).bit_generator.state,
    }
    ck.save(tmp_path / "c.pt", state)
    back = ck.load(tmp_path / "c.pt")
    assert back["big"] == 2**200 and back["neg"] == -(2**70) and back["tuple"] == (0.9, 0.99)
    assert back["nan"] != back["nan"] and back["inf"] == float("-inf") and back["s"] == "__not_a_tag__"
    assert list(back["int_keys"]) == [0] and torch.equal(back["int_keys"][0]["exp_avg"], state["int_keys"][0]["exp_avg"])
    assert back["__dunder_key"] == 1 and back["list"] == [1, [2, (3,)]]
    assert torch.equal(back["gen"], state["gen"]) and back["gen"].dtype == torch.uint8
    assert back["np"]["a"].dtype == np.uint32 and type(back["np"]["f64"]) is np.float64 and back["np"]["f64"] == 1 / 3
    assert type(back["np"]["i"]) is np.int64 and type(back["np"]["b"]) is np.bool_
    assert back["bf16"].dtype == torch.bfloat16 and torch.equal(back["bf16"], state["bf16"])
    assert back["empty"].shape == (0, 3) and back["scalar"].shape == () and back["bitgen"] == state["bitgen"]
    rng = np.random.default_rng()
    rng.bit_generator.state = back["bitgen"]
    assert rng.integers(1 << 30) == np.random.default_rng(1).integers(1 << 30)


def test_key_is_private_and_a_missing_key_is_named(tmp_path):
    ck.save(tmp_path / "c.pt", {"w": torch.ones(2)})
    assert (tmp_path / ".baffle-key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "c.pt").stat().st_mode & 0o777 == 0o600
    (tmp_path / ".baffle-key").unlink()
    msg = _refused(ck.load, tmp_path / "c.pt")
    assert ".baffle-key" in msg


def test_init_accepts_safetensors_plain_state_dict_and_a_keyless_checkpoint(tmp_path):
    sd = {"a.weight": torch.randn(3, 2), "a.bias": torch.zeros(3)}
    ck.save_weights(tmp_path / "w.safetensors", sd)
    torch.save(sd, tmp_path / "w.pt")
    run = tmp_path / "run"
    run.mkdir()
    ck.save(run / "checkpoint.pt", {"round": 1, "server": {"model": sd, "ema": {"decay": 0.9, "shadow": sd}}})
    for p in (tmp_path / "w.safetensors", tmp_path / "w.pt", run / "checkpoint.pt"):
        got = ck.load_model_weights(p)  # (safetensors sorts names; load_state_dict matches by name)
        assert sorted(got) == sorted(sd) and all(torch.equal(got[k], sd[k]) for k in sd)
    (run / ".baffle-key").unlink()  # shipped without its run's key: integrity only, still loads
    assert sorted(ck.load_model_weights(run / "checkpoint.pt")) == sorted(sd)
    _refused(ck.load_model_weights, tmp_path)  # a directory


def test_old_checkpoint_message_says_how_to_convert_and_conversion_needs_the_flag(tmp_path):
    state = {"round": 2, "server": {"model": {"w": torch.ones(2)}, "ema": None}, "t": (1, 2)}
    buf = io.BytesIO()
    torch.save(state, buf)
    old = tmp_path / "checkpoint.pt"
    old.write_bytes(ck.LEGACY_MAGIC + hashlib.sha256(buf.getvalue()).digest() + buf.getvalue())
    assert "--trust-pickle" in _refused(ck.load, old)
    _refused(lambda p: legacy.convert_legacy(p), old)
    legacy.convert_legacy(old, trust_pickle=True)
    back = ck.load(old)
    assert back["round"] == 2 and back["t"] == (1, 2) and torch.equal(back["server"]["model"]["w"], torch.ones(2))


def test_well_formed_checkpoints_of_the_wrong_shape_are_refused_for_init(tmp_path):
    odd = [{"round": 1}, {"server": []}, {"server": {"model": [1, 2]}}, {"server": {"model": {}, "ema": {}}},
           {"server": {"model": {"w": 1.0}, "ema": None}}, {"server": {"model": {"w": torch.ones(1)}, "ema": {"shadow": {3: torch.ones(1)}}}}]
    for i, state in enumerate(odd):
        path = tmp_path / f"odd{i}.pt"
        ck.save(path, state)
        _refused(ck.load_model_weights, path)
