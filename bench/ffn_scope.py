"""FFN neurons ranked across all layers (the paper's global pruning) or within each layer, from the same searches:
every EarlyBERT run of the GLUE benchmark's table has its ticket redrawn layer-wise from its own final gate
coefficients (ticket.json keeps them), and that slim model is trained exactly as the table's run was (its
config.json, only `ticket.ffn_scope` changed). The global side of each pair is the table's own score, so the
difference is paired on search, seed, data and recipe. Both tickets prune the same number of neurons, so the
FLOPs and the step time are the same; only which layers give them up differs.

Why: a 54-step search on CoLA prunes the early FFN layers hardest (MiniLM-L6: the 2nd and 3rd layers lose 52-60% of
their neurons, the 5th 14-18%), where the paper saw later layers pruned more after its longer searches.

    taskset -c 0 env OMP_NUM_THREADS=1 python bench/ffn_scope.py

Resumable: finished runs are read back.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if (ROOT / "src" / "earlybert").is_dir():
    sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from earlybert.finetune import COEFFICIENTS, FinetuneConfig, finetune, save_coefficients  # noqa: E402
from earlybert.runs import atomic_write_text  # noqa: E402
from earlybert.ticket import Ticket  # noqa: E402

from finetune_glue import interval  # noqa: E402
from machine import cpu_name  # noqa: E402

HERE = Path(__file__).resolve().parent
TASKS = "cola,mrpc,rte,qnli,stsb,sst2"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--table-runs", type=Path, default=HERE / "runs" / "finetune_glue_lr4e-5",
                   help="the GLUE benchmark's run folder whose EarlyBERT runs are redrawn")
    p.add_argument("--tasks", default=TASKS)
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--runs", type=Path, default=HERE / "runs" / "ffn_scope")
    p.add_argument("--output", type=Path, default=HERE / "results" / "ffn_scope_cpu")
    return p.parse_args(argv)


def coefficients_of(run: Path, folder: Path) -> Path:
    """A search folder holding the table run's search record and its final gate coefficients, for search_from."""
    if not (folder / COEFFICIENTS).exists():
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("search.json", "mask_history.json", "config.json"):
            shutil.copy(run / name, folder / name)
        ticket = Ticket.load(run / "ticket.json")
        save_coefficients(folder / COEFFICIENTS, ticket.head_scores, ticket.ffn_scores, ticket.step)
    return folder


def layerwise(args, task: str, seed: int) -> dict:
    run = args.table_runs / task / f"earlybert-seed{seed}"
    if not (run / "results.json").exists():
        raise SystemExit(f"ffn_scope.py: error: {run} has not finished (run bench/finetune_glue.py first)")
    raw = json.loads((run / "config.json").read_text())
    if not Path(raw["data"]).is_absolute():  # the benchmark records its prepared QNLI split relative to the repo
        raw["data"] = str(ROOT / raw["data"])
    config = FinetuneConfig(**raw)
    search = coefficients_of(run, args.runs / task / f"search-seed{seed}")
    config = replace(config, output=str(args.runs / task / f"earlybert-layer-seed{seed}"),
                     search_from=f"../{search.name}", ticket=replace(config.ticket, ffn_scope="layer"))
    layer = finetune(config, resume=True)
    global_ = json.loads((run / "results.json").read_text())
    kept = {scope: Ticket.load(folder / "ticket.json").kept_ffn for scope, folder in
            (("global", run), ("layer", Path(config.output)))}
    return {"task": task, "seed": seed, "global": global_["score"], "layer": layer["score"],
            "metric": layer["headline_metric"], "kept_ffn": kept}


def main(argv=None) -> None:
    args = parse_args(argv)
    pairs = [layerwise(args, task, int(seed)) for task in args.tasks.split(",") for seed in args.seeds.split(",")]
    diffs = [p["layer"] - p["global"] for p in pairs]
    paired = interval(diffs)  # the GLUE table's own paired mean and 95% t-interval
    mean, (low, high) = paired["mean"], paired["ci95"]
    by_task = {t: [p["layer"] - p["global"] for p in pairs if p["task"] == t] for t in args.tasks.split(",")}
    summary = {"layer_minus_global": mean, "ci95": paired["ci95"], "pairs": len(diffs),
               "layer_better": sum(d > 0 for d in diffs), "global_better": sum(d < 0 for d in diffs),
               "by_task": {t: statistics.mean(d) for t, d in by_task.items()}}
    result = {"command": "python " + " ".join(sys.argv), "machine": {"cpu": cpu_name(), "torch": torch.__version__},
              "summary": summary, "pairs": pairs}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.output.with_suffix(".json"), json.dumps(result, indent=1) + "\n")
    lines = ["# FFN pruning across all layers (global, the paper) or within each layer, from the same searches", "",
             f"Command: `{result['command']}`  ",
             f"Machine: {cpu_name()}, torch {torch.__version__}.  ",
             f"Each pair: one EarlyBERT run of the GLUE benchmark (`{args.table_runs.name}`, global) and its ticket "
             "redrawn layer-wise from the same gate coefficients, trained with the same settings.", "",
             "| task | seed | global | layer-wise | layer-wise - global | FFN neurons kept per layer, global |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {p['task']} | {p['seed']} | {p['global']:.2f} | {p['layer']:.2f} | {p['layer'] - p['global']:+.2f} "
              f"| {p['kept_ffn']['global']} |" for p in pairs]
    lines += ["", f"Layer-wise minus global over {len(diffs)} pairs: {mean:+.2f} points "
              f"(95% CI {low:+.2f} to {high:+.2f}); layer-wise better in {summary['layer_better']}, "
              f"global in {summary['global_better']}. Per task: "
              + ", ".join(f"{t} {d:+.2f}" for t, d in summary["by_task"].items()) + "."]
    atomic_write_text(args.output.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
