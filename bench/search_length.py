"""How long the fine-tuning search must run for a ticket that holds up: the stop-time ablation (`earlybert ablate
stop`, the paper's Fig. 3) on a GLUE task over several seeds, against the full fine-tuning of the GLUE benchmark.

For each seed, one search runs to the latest stop time with the early-bird rule off, and a ticket is drawn from the
gate coefficients at each stop time and trained as an EarlyBERT run (2 epochs at 2x the rate, from the pretrained
weights) charged the search up to its step. The table gives, per stop time, the score over seeds, its paired
difference from full fine-tuning of the same task and seed (read from the GLUE benchmark's runs, which use the same
data, rate and seeds), and the time saved as each run estimates it (its paired slim / full step-time ratio).

    taskset -c 1 env OMP_NUM_THREADS=1 python bench/search_length.py --task cola --seeds 1,2,3

Resumable: a rerun with the same arguments reads finished seeds back and continues the others.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if (ROOT / "src" / "earlybert").is_dir():
    sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from earlybert.cli import main as earlybert  # noqa: E402
from earlybert.runs import atomic_write_text  # noqa: E402

from machine import cpu_name, minilm_path, mixed_precision  # noqa: E402

HERE = Path(__file__).resolve().parent
STOPS = "0.2,0.4,1.0"
LR = 4e-5  # the GLUE benchmark's --lr, whose full runs are the baseline


def ablate(args, seed: int) -> dict:
    """One seed's stop-time ablation through the command line, exactly as a user would run it."""
    out = Path(args.runs) / f"stop-seed{seed}"
    argv = ["ablate", "stop", "--model", args.model or minilm_path(), "--task", args.task, "--data", args.data,
            "--output", str(out), "--lr", str(args.lr), "--seed", str(seed), "--stop-at", args.stop_at, "--resume",
            "--mixed-precision", mixed_precision()]
    if earlybert(argv) != 0:
        raise SystemExit(f"search_length.py: error: earlybert {' '.join(argv)} failed")
    return json.loads((out / "results.json").read_text())


def full_score(args, seed: int) -> float | None:
    run = Path(args.full_runs) / args.task / f"full-seed{seed}" / "results.json"
    return json.loads(run.read_text())["score"] if run.exists() else None


def summarise(by_seed: dict[int, dict], full: dict[int, float | None]) -> list[dict]:
    """Per stop time: score and estimated saving over seeds, and the paired difference from full where it ran."""
    rows = []
    for i, point in enumerate(next(iter(by_seed.values()))["points"]):
        scores = {s: r["points"][i]["score"] for s, r in by_seed.items()}
        diffs = [scores[s] - full[s] for s in scores if full.get(s) is not None]
        saved = [r["points"][i]["time_saved_estimated"] for r in by_seed.values()]
        rows.append({"stop_at": point["stop_at"], "steps": point["steps"], "scores": scores,
                     "score": statistics.fmean(scores.values()),
                     "score_std": statistics.stdev(scores.values()) if len(scores) > 1 else None,
                     "minus_full": statistics.fmean(diffs) if diffs else None, "minus_full_n": len(diffs),
                     "time_saved_estimated": statistics.fmean(saved),
                     "theoretical_saved": statistics.fmean(r["points"][i]["theoretical_saved"]
                                                           for r in by_seed.values())})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="cola")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--stop-at", default=STOPS, help="stop times, fractions of epoch 1")
    parser.add_argument("--lr", type=float, default=LR)
    parser.add_argument("--model", default=None, help="model folder (default: the MiniLM-L6 package's)")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "glue"), help="GLUE folder")
    parser.add_argument("--runs", default=None, help="ablation runs (default bench/runs/search_length/TASK)")
    parser.add_argument("--full-runs", default=str(HERE / "runs" / "finetune_glue_lr4e-5"),
                        help="the GLUE benchmark's runs, whose full fine-tuning is the baseline")
    parser.add_argument("--output", default=None, help="results stem (default bench/results/search_length_TASK_cpu)")
    args = parser.parse_args()
    args.runs = args.runs or str(HERE / "runs" / "search_length" / args.task)
    output = Path(args.output or HERE / "results" / f"search_length_{args.task}_cpu")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    by_seed = {s: ablate(args, s) for s in seeds}
    full = {s: full_score(args, s) for s in seeds}
    rows = summarise(by_seed, full)
    metric = next(iter(by_seed.values()))["headline_metric"]
    result = {"command": "python " + " ".join(sys.argv), "machine": {"cpu": cpu_name(), "torch": torch.__version__,
                                                                     "python": platform.python_version(),
                                                                     "threads": torch.get_num_threads()},
              "task": args.task, "lr": args.lr, "seeds": seeds, "full": full, "rows": rows,
              "tickets": {s: [p["ticket"] for p in r["points"]] for s, r in by_seed.items()}}
    atomic_write_text(output.with_suffix(".json"), json.dumps(result, indent=1) + "\n")
    fulls = [v for v in full.values() if v is not None]
    lines = [f"# How long the search must run: {args.task}, stop-time ablation, seed{'s' if len(seeds) > 1 else ''} "
             f"{', '.join(map(str, seeds))}", "",
             f"Command: `{result['command']}`  ",
             f"Machine: {result['machine']['cpu']}, torch {result['machine']['torch']}, "
             f"{result['machine']['threads']} thread(s).  ",
             f"MiniLM-L6, lr {args.lr:g} (the slim model at 2x), the package's other defaults; the early-bird rule "
             "off, so each row's search ran exactly to its stop time.", "",
             f"| search stopped at | steps | {metric} (mean ± std) | per seed | minus full (paired) | "
             "time saved (estimated) | linear FLOPs saved |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        spread = f" ± {r['score_std']:.2f}" if r["score_std"] is not None else ""
        minus = f"{r['minus_full']:+.2f} (n={r['minus_full_n']})" if r["minus_full"] is not None else "-"
        lines.append(f"| {r['stop_at']:.0%} of epoch 1 | {r['steps']} | {r['score']:.2f}{spread} | "
                     + ", ".join(f"{v:.2f}" for v in r["scores"].values())
                     + f" | {minus} | {r['time_saved_estimated']:.1%} | {r['theoretical_saved']:.1%} |")
    if fulls:
        where = Path(args.full_runs).resolve()
        where = where.relative_to(ROOT) if where.is_relative_to(ROOT) else where
        lines += ["", f"Full fine-tuning, same seeds (`{where}`): "
                  + ", ".join(f"{v:.2f}" for v in fulls) + f" (mean {statistics.fmean(fulls):.2f})."]
    lines += ["", "Time saved: 1 - the run's step time (search up to its stop included) / full fine-tuning's, the "
              "latter estimated from each run's paired slim / full step-time ratio; linear FLOPs saved counts the "
              "search at the full model's FLOPs."]
    atomic_write_text(output.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
