"""Client peak memory of one MiniLM/VADER client step, full fine-tune: forward-only (BAFFLE) vs backprop.

Issue 15's goal: for all-MiniLM-L6-v2 on VADER (every one of its 22.6M parameters trainable), a forward-only
client needs at most half the memory of a backprop client at the same batch, and uploads 4K bytes per round.
Method as in experiments/cifar_memory.py (and benchmarks/bench_client.py): one fresh process per number, 1 thread;
after imports, model, data and client are set up the child resets the kernel's peak-RSS counter
(``/proc/self/clear_refs`` = 5), reads VmRSS, runs ONE client step on a batch of real VADER sentences (tokenised
by MiniLM's tokenizer, padded to 64 tokens; the model cuts each batch to its longest sentence) and reads VmHWM.
``step peak`` = VmHWM - VmRSS before: the memory the step itself needs on top of the loaded process.

Kinds, each forward-only one with the direction kinds ``v1`` (the default) and ``v2-gauss``:

* ``baffle_batched``: ``Client.step`` with the engine ``estimator.engine``'s default (batched, 512 MiB budget)
  gives. The batched interpreter cannot trace the BERT (``engine.supports(model)`` is False), so every call
  falls back to the reference loop: this is what a MiniLM client really runs.
* ``baffle_loop``: ``Client.step`` with ``estimator.engine=loop`` (one perturbed forward at a time).
* ``baffle_loop_nocache``: the same with the model's prefix cache turned off (``model.prefix_cache = None``), to
  show what the cache's snapshot of the encoder weights costs (diagnostic, not a configuration option; v2-gauss
  only).
* ``bp``: ``BPClient.gradient`` (forward + autograd backward of every parameter: the FedSGD client step; a FedAvg
  client does the same per local step plus its optimizer state).

The upload is the real ``Upload`` message of the measured forward-only step (``to_bytes()``: a 16-byte header
plus 4 bytes per loss difference).

    .venv/bin/python experiments/text_memory.py [--batches 8,16,32] [--K 20]

Writes docs/results/text_memory.json and the memory section of docs/finetune-text.md (``--doc-only``: rewrite the
section from the JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "results" / "text_memory.json"
DOC = ROOT / "docs" / "finetune-text.md"
BEGIN, END = "<!-- text_memory:begin -->", "<!-- text_memory:end -->"
TITLE = (
    "# all-MiniLM-L6-v2 on VADER: forward-only vs backprop\n\n"
    "Issue 15: fine-tuning the pretrained sentence encoder all-MiniLM-L6-v2 (22.6M parameters, "
    "`model.name=minilm`) on the VADER sentiment sentences (`data.name=vader`, one client per domain with "
    "`data.partition=domain`). Accuracy: `experiments/finetune_text.py` trains the classification head "
    "forward-only, by backprop and as a linear probe; its results are in "
    "[experiments/results/finetune_text.md](../experiments/results/finetune_text.md). Client memory of the full "
    "fine-tune: `experiments/text_memory.py`, below.\n"
)
FORWARD_KINDS = ("baffle_batched", "baffle_loop", "baffle_loop_nocache")
NOISES = ("v1", "v2-gauss")
# (kind, noise) measured per batch: the diagnostic without the prefix cache only with v2-gauss (the cache's cost does
# not depend on the direction kind; this keeps the run under half an hour on a loaded core)
CONFIGS = [(kd, nz) for kd in FORWARD_KINDS[:2] for nz in NOISES] + [("baffle_loop_nocache", "v2-gauss"), ("bp", "v1")]
SIGMA = 1e-3
MIB = 1024 * 1024




def _data(source: str, n: int, seed: int):
    """``n`` training sentences: ``vader`` (a seeded subset of the real training split) or ``random`` (random token
    ids, full-length masks, VADER's shape [n, 2, 1, 64]; for CI without the data)."""
    import numpy as np
    import torch

    from baffle.data.dataset import Dataset

    if source == "vader":
        from baffle.data.registry import load_dataset

        full = load_dataset("vader")
        return full.subset(np.sort(np.random.default_rng(seed).choice(len(full), n, replace=False)))
    if source != "random":
        raise ValueError(f"unknown data source {source!r}")
    g = torch.Generator().manual_seed(seed)
    x = torch.ones(n, 2, 1, 64)
    x[:, 0, 0] = torch.randint(1000, 30522, (n, 64), generator=g).float()
    return Dataset(x, torch.randint(0, 2, (n,), generator=g), 2, "vader")


def child(kind: str, name: str, batch: int, k: int, warm: bool, noise_kind: str = "v1", source: str = "vader") -> dict:
    """Runs in a fresh process: one client step of ``kind``; RSS numbers in MiB. ``warm``: first one step on a
    batch of ONE sentence with the same model and engine (pages in the kernels' code, initializes autograd and the
    prefix cache, allocates almost no batch-sized memory), so the measured step shows what grows with the batch
    rather than one-off costs."""
    import numpy as np
    import torch

    from baffle.baselines import BPClient
    from baffle.client import Client
    from baffle.config import EstimatorConfig
    from baffle.engine import make_engine
    from baffle.nlp.bert import split_input
    from baffle.nlp.pretrained import build_text_model
    from baffle.protocol import noise
    from baffle.protocol.messages import RoundPlan
    from baffle.records.results import step_peak

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_text_model(name, 2)
    if kind == "baffle_loop_nocache":
        model.prefix_cache = None
    n = 4 * batch
    data = _data(source, n, batch)
    cfg = EstimatorConfig()
    engine = make_engine(cfg.engine, cfg.max_memory_mb) if kind == "baffle_batched" else make_engine("loop")
    supports = bool(engine.supports(model)) if hasattr(engine, "supports") else None  # tracing is a one-off cost
    cls = BPClient if kind == "bp" else Client
    client = cls(0, data, np.arange(n), model, batch_size=batch, seed=0, engine=engine)
    plan = RoundPlan(0, noise.round_seeds(0, 0, k), SIGMA, "forward", batch, noise=noise_kind)
    state = client.sampler.state_dict()  # the measured batch's longest sentence (the model cuts the batch to it)
    tokens = int(split_input(data.x[client.sampler.next_batch()])[0].shape[1])
    client.sampler.load_state_dict(state)
    if warm:
        small = cls(1, data, np.arange(n), model, batch_size=1, seed=1, engine=engine)
        small.gradient(None) if kind == "bp" else small.step(RoundPlan(0, plan.seeds, SIGMA, "forward", 1, noise=noise_kind))
        del small
    t0 = time.perf_counter()
    out, before, peak = step_peak(lambda: client.gradient(None) if kind == "bp" else client.step(plan))
    seconds = time.perf_counter() - t0
    if kind == "bp":
        upload_bytes = None  # FedSGD's client uploads its gradient: n float32
        upload_payload = int(out[0].nbytes)
    else:
        upload_bytes, upload_payload = len(out.to_bytes()), int(np.asarray(out.loss_diffs, dtype=np.float32).nbytes)
    params = list(model.parameters())
    return {"kind": kind, "model": name, "batch": batch, "K": k, "warm": warm, "noise": None if kind == "bp" else noise_kind,
            "data": source, "tokens": tokens, "engine": engine.name, "engine_supports": supports, "seconds": seconds,
            "rss_before_mib": before, "peak_mib": peak, "step_peak_mib": peak - before,
            "upload_bytes": upload_bytes, "upload_payload_bytes": upload_payload,
            "num_params": sum(p.numel() for p in params),
            "encoder_params": sum(p.numel() for p in model.bert.parameters()),
            "largest_tensor": max(p.numel() for p in params),
            "largest_non_embedding_tensor": max(p.numel() for nm, p in model.named_parameters() if "embeddings" not in nm)}


def run_child(kind: str, name: str, batch: int, k: int, warm: bool, noise_kind: str, source: str = "vader") -> dict:
    """``child`` in a fresh process (one thread), its result dict."""
    cmd = [sys.executable, __file__, "--child", kind, name, str(batch), str(k), str(int(warm)), noise_kind, source]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def measure(batches: list[int], k: int, name: str = "minilm") -> tuple[list[dict], dict]:
    rows, facts = [], {}
    for b in batches:
        for kind, noise_kind in CONFIGS:
            row: dict = {}
            for warm in (False, True):
                r = run_child(kind, name, b, k, warm, noise_kind)
                if not warm:
                    row.update({key: r[key] for key in ("kind", "model", "batch", "K", "noise", "tokens", "engine",
                                                         "engine_supports", "upload_bytes", "upload_payload_bytes")})
                    facts = {key: r[key] for key in ("num_params", "encoder_params", "largest_tensor", "largest_non_embedding_tensor")}
                when = "warm" if warm else "cold"
                row.update({f"{key}_{when}": r[key] for key in ("rss_before_mib", "peak_mib", "step_peak_mib", "seconds")})
            rows.append(row)
            print(f"B={b:3d} {kind:20s} {str(row['noise']):9s} step peak cold {row['step_peak_mib_cold']:8.2f} MiB, warm "
                  f"{row['step_peak_mib_warm']:8.2f} MiB (process peak {row['peak_mib_cold']:.0f} MiB, "
                  f"{row['seconds_cold']:.1f} s, {row['tokens']} tokens)", flush=True)
    return rows, facts


def _verdict(ratio: float) -> str:
    return "met" if ratio <= 0.5 else "**not met**"


def write_doc(res: dict) -> None:
    from baffle.records.results import write_section
    from baffle.records.tables import table_lines

    bp = {r["batch"]: r for r in res["rows"] if r["kind"] == "bp"}

    def ratio(r: dict, when: str) -> float:
        return r[f"step_peak_mib_{when}"] / bp[r["batch"]][f"step_peak_mib_{when}"]

    rows = [[r["batch"], r["tokens"], r["kind"], r["noise"] or "-", f"{r['step_peak_mib_cold']:.1f}", f"{ratio(r, 'cold'):.2f}x",
             f"{r['step_peak_mib_warm']:.1f}", f"{ratio(r, 'warm'):.2f}x", f"{r['peak_mib_cold']:.0f}",
             f"{r['seconds_cold']:.1f}"] for r in res["rows"]]
    goal = [[r["batch"], r["kind"], r["noise"], f"{ratio(r, 'cold'):.2f}x", _verdict(ratio(r, "cold")),
             f"{ratio(r, 'warm'):.2f}x", _verdict(ratio(r, "warm"))]
            for r in res["rows"] if r["kind"] in ("baffle_batched", "baffle_loop")]
    f = res["facts"]
    mib = lambda n: n * 4 / MIB  # noqa: E731  (float32 elements -> MiB)
    up = next(r for r in res["rows"] if r["kind"] != "bp")
    K = res["K"]
    supports = next(r["engine_supports"] for r in res["rows"] if r["kind"] == "baffle_batched")
    fo = [r for r in res["rows"] if r["kind"] == "baffle_batched"]
    met_cold = [r for r in fo if ratio(r, "cold") <= 0.5]
    met_warm = [r for r in fo if ratio(r, "warm") <= 0.5]
    bp_rows = sorted(bp.values(), key=lambda r: r["batch"])
    nc = {(r["batch"], r["noise"]): r for r in res["rows"] if r["kind"] == "baffle_loop_nocache"}
    lo = {(r["batch"], r["noise"]): r for r in res["rows"] if r["kind"] == "baffle_loop"}
    cache_cost = [lo[key]["step_peak_mib_cold"] - nc[key]["step_peak_mib_cold"] for key in lo if key in nc]
    noise_cost = [lo[b, "v1"]["step_peak_mib_cold"] - lo[b, "v2-gauss"]["step_peak_mib_cold"] for b, _ in lo if (b, "v2-gauss") in lo]
    nocache_ratios = ", ".join(f"{ratio(nc[key], 'cold'):.2f}x" for key in sorted(nc))
    bp_steps = ", ".join(f"{r['step_peak_mib_cold']:.0f}" for r in bp_rows)
    batches = ", ".join(str(r["batch"]) for r in bp_rows)
    fo_steps = ", ".join(f"{r['step_peak_mib_cold']:.0f}" for r in sorted(fo, key=lambda r: r["batch"]) if r["noise"] == "v1")
    span = lambda xs: f"{min(xs):.0f} to {max(xs):.0f}" if xs else "n/a"  # noqa: E731
    section = "\n".join([
        BEGIN,
        "## Client peak memory: forward-only vs backprop (full fine-tune)",
        "",
        f"`experiments/text_memory.py` (K={K}, sigma {res['sigma']:g}, 1 thread, load average {res['loadavg']:.1f}; "
        "memory, not time, so the load does not change it): every parameter of all-MiniLM-L6-v2 trainable "
        f"({f['num_params'] / 1e6:.1f}M, {mib(f['num_params']):.0f} MiB in float32; the token embedding table alone "
        f"{f['largest_tensor'] / 1e6:.1f}M), a batch of real VADER training sentences (the same batch for every kind at "
        "a batch size; `tokens` = its longest sentence, to which the model cuts the batch). One fresh process per "
        "number; after setup the child resets the peak-RSS counter, runs ONE client step and reads VmHWM; `step peak` "
        "= VmHWM - VmRSS before the step. `cold`: the process's first step (includes one-off costs: kernel code "
        "paged in, autograd's first-use state): the verdict uses it. `warm`: after "
        "one step on a batch of ONE sentence with the same model and engine: a lower bound that also leaves out "
        "buffers kept from the warm-up (see below). `bp` = `BPClient.gradient` (forward + backward of every "
        "parameter, the FedSGD client step); `baffle_batched` = `Client.step` with the default engine "
        f"(`estimator.engine=batched`: it cannot trace the BERT, `supports(model)` = {supports}, so it runs the "
        "reference loop, what a MiniLM client really runs); `baffle_loop` = `estimator.engine=loop`; "
        "`baffle_loop_nocache` = the loop with the model's prefix cache off (a diagnostic, v2-gauss only). `v1` is the default "
        "direction kind, `v2-gauss` the seekable one.",
        "",
        f"Upload per client per round (the measured step's real `Upload` message, K={K}): "
        f"**{up['upload_bytes']} bytes** = {up['upload_payload_bytes']} bytes of loss differences (4K) + a "
        f"{up['upload_bytes'] - up['upload_payload_bytes']}-byte header (client id, round, sample count, K). The "
        f"FedSGD client uploads its gradient: {bp_rows[0]['upload_payload_bytes']:,} bytes.",
        "",
        "Goal: forward-only client step peak <= 0.5x the BP client's at the same batch (verdict on the cold step; "
        f"met cold at {len(met_cold)} of {len(fo)} default-engine configurations, warm at {len(met_warm)} of {len(fo)}).",
        "",
        *table_lines(["batch", "forward-only client", "noise", "cold vs BP", "<= 0.5x (verdict)", "warm vs BP", "<= 0.5x"],
                     goal, ["r", "l", "l", "r", "l", "r", "l"]),
        "",
        *table_lines(["batch", "tokens", "client step", "noise", "step peak MiB (cold)", "vs BP", "step peak MiB (warm)",
                      "vs BP", "process peak MiB (cold)", "step s (cold)"], rows,
                     ["r", "r", "l", "l", "r", "r", "r", "r", "r", "r"]),
        "",
        "Why, from these numbers. The forward-only step holds, on top of the loaded process: the Perturber's copy "
        f"of the original weights (every trainable parameter: {mib(f['num_params']):.0f} MiB, allocated per step), a "
        "direction scratch buffer of at most `PERTURB_CHUNK` = 1 Mi elements (4 MiB: larger tensors, here v1's token "
        f"embedding table of {mib(f['largest_tensor']):.0f} MiB, are perturbed in pieces; v2-gauss perturbs only the "
        "embedding rows the batch reads, so its buffer is the largest other tensor, "
        f"{mib(f['largest_non_embedding_tensor']):.1f} MiB; v1 minus v2-gauss here: {span(noise_cost)} MiB), and one "
        "forward's activations. The prefix cache (on by default) snapshots "
        "only the stages below the first one a perturbation changes (`baffle.prefix.PrefixCache`, told by the engine "
        "which parameters it perturbs); in a full fine-tune every perturbation changes the first stage (the "
        f"embeddings), so it keeps no copy at all: the cold step with the cache needs {span(cache_cost)} MiB more than "
        f"without it (before this was fixed the cache copied the whole encoder, {mib(f['encoder_params']):.0f} MiB, "
        "at every new minibatch and never skipped a stage). "
        "Without the cache the v2-gauss step's ratios are "
        f"{nocache_ratios} (cold). The BP step holds a gradient per parameter ({mib(f['num_params']):.0f} MiB, the "
        "embedding table's included: it is dense), the flattened gradient it uploads (another copy) and every "
        f"layer's activations for the backward; the activations make it grow with the batch ({bp_steps} MiB at "
        f"batch {batches}), while the forward-only step keeps one forward's activations at a time and grows much "
        f"less (default engine, v1: {fo_steps} MiB). Its one weight-sized buffer (the originals) is a "
        "third of BP's whole step at the smallest batch, and the ratio falls as the batch grows. "
        "Warm numbers of identical code paths (`baffle_batched` and `baffle_loop` both run the loop) differ by up to "
        "~25 MiB (the allocator reusing memory freed by the warm-up): read differences of that size as noise.",
        "",
        END,
    ])
    write_section(DOC, BEGIN, END, section, title=TITLE)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="8,16,32")
    ap.add_argument("--K", type=int, default=20)
    ap.add_argument("--doc-only", action="store_true", help="rewrite docs/finetune-text.md's section from the saved JSON")
    ap.add_argument("--child", nargs=7, metavar=("KIND", "MODEL", "BATCH", "K", "WARM", "NOISE", "DATA"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, name, b, k, warm, noise_kind, source = args.child
        print(json.dumps(child(kind, name, int(b), int(k), warm == "1", noise_kind, source)))
        return
    if args.doc_only:
        write_doc(json.loads(OUT.read_text()))
        return
    t0 = time.perf_counter()
    rows, facts = measure([int(b) for b in args.batches.split(",")], args.K)
    from baffle.records.results import write_json

    res = {"K": args.K, "sigma": SIGMA, "threads": 1, "model": "minilm", "data": "vader", "trainable": "all",
           "loadavg": os.getloadavg()[0], "wall_s": time.perf_counter() - t0, "facts": facts, "rows": rows}
    write_json(OUT, res)
    write_doc(res)
    print(f"wrote {OUT} and {DOC} in {res['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
