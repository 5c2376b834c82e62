"""The tables of docs/inference-clients.md, from the committed JSON outputs of:

  experiments/inference_accuracy.py  -> experiments/results/inference_accuracy/<run>.json
  benchmarks/client_resources.py     -> benchmarks/results/client_resources.json
  experiments/int8_sigma.py          -> experiments/results/int8_sigma.json
  benchmarks/onnx_export.py          -> benchmarks/results/onnx_export.json

Usage: python benchmarks/inference_table.py   (writes docs/results/inference_clients.md and prints it)
"""

from __future__ import annotations

import json
from pathlib import Path

from baffle.records.results import results_dir, write_text
from baffle.records.tables import table_lines, yes_no

ROOT = Path(__file__).resolve().parents[1]
ACC = ROOT / "experiments" / "results" / "inference_accuracy"
RES = results_dir(__file__) / "client_resources.json"
SIGMA = ROOT / "experiments" / "results" / "int8_sigma.json"
EXPORT = results_dir(__file__) / "onnx_export.json"
OUT = ROOT / "docs" / "results" / "inference_clients.md"

# client kind -> (accuracy run, resource kinds, what the run is)
KINDS = [
    ("torch float", "torch_float", ["torch_float"], "all 10 clients torch"),
    ("ONNX Runtime float", "mixed_float", ["onnx_float"], "5 ONNX + 5 torch clients"),
    ("ONNX Runtime int8", "onnx_int8", ["onnx_int8"], "all 10 clients ONNX int8 (activations)"),
    ("pruned 50%", "pruned_50", ["pruned_onnx", "pruned_torch"], "5 ONNX + 5 torch, mask kept by server"),
    ("BP torch (FedSGD)", "fedsgd", ["bp_torch"], "all 10 clients backprop"),
]


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def main_table() -> str:
    res = _load(RES)
    rows = {r["kind"]: r for r in res["rows"]} if res else {}
    table = []
    for label, run, kinds, what in KINDS:
        acc = _load(ACC / f"{run}.json")
        a = f"{acc['summary']['final_test_acc']:.4f}" if acc else "not run"
        rounds = str(acc["summary"]["rounds"]) if acc else "-"
        for kind in kinds:
            r = rows.get(kind)
            name = label if len(kinds) == 1 else f"{label} ({kind.split('_')[1]})"
            if r is None:
                table.append([name, what, a, rounds] + ["-"] * 5)
                continue
            table.append([name, what, a, rounds, f"{r['step_cpu_s'] * 1e3:.1f}", f"{r['step_wall_s'] * 1e3:.1f}",
                          f"{r['peak_rss_mb']:.0f}", f"{r['step_peak_increment_mb']:.1f}", yes_no(r["torch_imported"])])
    lines = table_lines(["client kind", "federation", "test acc (final)", "rounds", "CPU ms / client step", "wall ms / client step",
                         "peak RSS MB (process)", "RSS growth in steps MB", "torch imported"], table)
    if res:
        lines.append(
            f"\nResources: K={res['K']}, batch {res['batch_size']}, sigma {res['sigma']}, {res['threads']} thread, median of "
            f"{res['steps']} steps after a warm-up, one fresh process per kind; 1-minute load average of the shared "
            f"machine at the end: {res['loadavg_1m_at_end']:.1f} (wall times are inflated by it; CPU times much less)."
        )
    return "\n".join(lines)


def accuracy_history() -> str:
    rows = []
    for _, run, _, _ in KINDS:
        acc = _load(ACC / f"{run}.json")
        if acc:
            rows.append([run] + [f"{h['test_acc']:.4f}" for h in acc["history"]] + [acc["wall_s"]])
    lines = table_lines(["run"] + [f"acc @ {h['round']}" for h in _first_history()] + ["wall s"], rows)
    settings = next((_load(ACC / f"{run}.json")["settings"] for _, run, _, _ in KINDS if (ACC / f"{run}.json").exists()), [])
    base = [s for s in settings if not s.startswith(("federation.onnx", "model.prune", "run.method"))]
    return "\n".join(lines) + "\n\nCommon settings: `" + " ".join(base) + "`"


def default_recipe_table() -> str:
    """The same client runtimes on the default recipe run to convergence (experiments/inference_accuracy.py --recipe default)."""
    found = [(label, what, _load(ACC / "default_recipe" / f"{run}.json")) for label, run, _, what in KINDS]
    runs = [(label, acc) for label, _, acc in found if acc]
    whats = {label: what for label, what, acc in found if acc}
    if not runs:
        return "(not run: `python experiments/inference_accuracy.py --recipe default`)"
    ref = dict(runs).get("torch float")
    marks = [h["round"] for h in runs[0][1]["history"]][2::3]  # a few points along the run
    rows = []
    for label, acc in runs:
        at = {h["round"]: h["test_acc"] for h in acc["history"]}
        final = acc["summary"]["final_test_acc"]
        gap = f"{100 * (final - ref['summary']['final_test_acc']):+.2f}" if ref else "-"
        rows.append([label, whats[label], acc["summary"]["rounds"], *[f"{100 * at[m]:.2f}" if m in at else "-" for m in marks],
                     f"{100 * final:.2f}", f"{100 * acc['summary']['best_test_acc']:.2f}", gap, acc["wall_s"]])
    lines = table_lines(["client kind", "federation", "rounds", *[f"acc % @ {m}" for m in marks], "final %", "best %",
                         "vs torch float (points)", "wall s"], rows)
    extra = [s for s in runs[0][1]["settings"] if not s.startswith(("federation.onnx", "model.prune", "run.method"))]
    return "\n".join(lines) + sigma_pair_table() + ("\n\nDefault `baffle run` recipe (lenet_small 14x14, K=20, batch 8, whole MNIST test set), one seed; "
                               "overrides: `" + " ".join(extra) + "`. Wall times depend on the "
                               "shared machine's load.")


def sigma_pair_table() -> str:
    """int8 vs torch float on the default recipe at sigma = 1e-2, the sigma the int8 rule asks for."""
    pair = [(label, _load(ACC / "default_recipe" / f"{run}.json"))
            for label, run in (("torch float", "torch_float_sigma1e-2"), ("ONNX Runtime int8", "onnx_int8_sigma1e-2"))]
    if not all(acc for _, acc in pair):
        return ("\n\nAt sigma = 1e-2 (the int8 rule): not run yet (`python experiments/inference_accuracy.py --recipe "
                "default --runs torch_float_sigma1e-2,onnx_int8_sigma1e-2`).")
    ref = pair[0][1]["summary"]["final_test_acc"]
    rows = [[label, acc["summary"]["rounds"], f"{100 * acc['summary']['final_test_acc']:.2f}",
             f"{100 * acc['summary']['best_test_acc']:.2f}", f"{100 * (acc['summary']['final_test_acc'] - ref):+.2f}", acc["wall_s"]]
            for label, acc in pair]
    return "\n\nThe same pair at sigma = 1e-2 (the int8 rule; every other setting as above):\n\n" + "\n".join(
        table_lines(["client kind", "rounds", "final %", "best %", "vs torch float at sigma 1e-2 (points)", "wall s"], rows))


def _first_history() -> list[dict]:
    for _, run, _, _ in KINDS:
        acc = _load(ACC / f"{run}.json")
        if acc:
            return acc["history"]
    return []


def sigma_table() -> str:
    data = _load(SIGMA)
    if not data:
        return "(experiments/int8_sigma.py not run)"
    out = [f"K={data['K']}, batch {data['batch_size']}, 3 minibatches averaged; 'warm' = after {data['warmup_steps']} SGD steps."]
    for state, d in data["states"].items():
        steps = d["weight_int8_steps"]
        out.append(f"\n**{state}** — int8 weight step max|w|/127 per tensor: " + ", ".join(f"`{k}` {v:.1e}" for k, v in steps.items()) + "\n")
        out += table_lines(["sigma", "cos(int8, float)", "cos(int8_weights, float)", "median abs dL (float)", "median abs dL error int8",
                            "median abs dL error int8_weights", "cos(float est., true grad)"], [sigma_row(r) for r in d["rows"]])
    return "\n".join(out)


def sigma_row(r: dict) -> list[str]:
    """One sigma row of experiments/results/int8_sigma.json."""
    return [f"{r['sigma']:g}", f"{r['cos_int8_float']:.3f}", f"{r['cos_int8_weights_float']:.3f}", f"{r['median_abs_dL']:.2e}",
            f"{r['median_abs_err_int8']:.2e}", f"{r['median_abs_err_int8_weights']:.2e}", f"{r['cos_float_true']:.3f}"]


def export_table() -> str:
    data = _load(EXPORT)
    if not data:
        return "(benchmarks/onnx_export.py not run)"
    rows = []
    for r in data["rows"]:
        a, b = r["inputs"], r["reexport"]
        rows.append([r["model"], r["n_params"], f"{a['graph_bytes_once']} B", a["bytes_per_round"], f"{a['per_perturbation_s'] * 1e3:.2f}",
                     b["bytes_per_round"], f"{b['export_s_per_round'] * 1e3:.0f}", f"{b['per_perturbation_s'] * 1e3:.2f}"])
    out = table_lines(["model", "n", "weights as inputs: graph (once)", "bytes / round", "ms / perturbation (run)",
                       "re-export: bytes / round", "export ms / round", "ms / perturbation (rebuild session + run)"], rows)
    out.append(f"\nMedian CPU time of {data['reps']} repetitions, batch 32, 1 thread; load average at the end {data['loadavg_1m_at_end']:.1f}.")
    return "\n".join(out)


def main() -> None:
    text = "\n\n".join([
        "# Inference-only clients: generated tables",
        "Generated by `benchmarks/inference_table.py`; do not edit by hand.",
        "## Accuracy and cost per client kind (MNIST, LeNet)", main_table(),
        "## Accuracy during the runs", accuracy_history(),
        "## The default recipe to convergence", default_recipe_table(),
        "## int8 vs sigma", sigma_table(),
        "## ONNX export: weights as inputs vs re-export", export_table(),
    ]) + "\n"
    write_text(OUT, text)
    print(text)


if __name__ == "__main__":
    main()
