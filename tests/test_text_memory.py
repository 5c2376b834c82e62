"""experiments/text_memory.py's child measurement (the numbers behind docs/finetune-text.md's memory section) runs
for both client kinds, forward-only and backprop, in a fresh process as the script runs it: a tiny random BERT
(``bert_tiny``) on random token ids of VADER's shape, so neither MiniLM nor the VADER data is needed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "text_memory.py"

if not Path("/proc/self/clear_refs").exists():  # the peak-RSS reset is Linux's
    pytest.skip("needs Linux's /proc/self/clear_refs", allow_module_level=True)


def _script():
    spec = importlib.util.spec_from_file_location("text_memory", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("text_memory", mod)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("kind, warm", [("baffle_batched", False), ("bp", False), ("baffle_loop_nocache", True)])
def test_child_measures_one_step(kind, warm):
    r = _script().run_child(kind, "bert_tiny", 2, 4, warm, "v2-gauss", "random")
    assert (r["kind"], r["model"], r["batch"], r["K"], r["warm"], r["tokens"]) == (kind, "bert_tiny", 2, 4, warm, 64)
    for key in ("rss_before_mib", "peak_mib", "step_peak_mib", "seconds", "upload_payload_bytes", "num_params",
                "encoder_params", "largest_tensor", "largest_non_embedding_tensor"):
        assert r[key] > 0, key
    assert r["peak_mib"] >= r["rss_before_mib"]
    if kind == "bp":
        assert r["noise"] is None and r["upload_payload_bytes"] == 4 * r["num_params"]
    else:  # the real Upload message: a 16-byte header + K float32 loss differences
        assert r["noise"] == "v2-gauss" and r["upload_payload_bytes"] == 4 * 4 and r["upload_bytes"] == 16 + 4 * 4
    if kind == "baffle_batched":  # the batched interpreter cannot trace the BERT: the client runs the loop
        assert r["engine"] == "batched" and r["engine_supports"] is False
