"""The accuracy / time trade-off of EarlyBERT's tickets on SST-2 with MiniLM-L6 (the paper's Table 5 and Fig. 3,
at CPU scale), and the MLM-objective search against the task-loss search.

1. The sweep (`earlybert sweep`): one search, then a slim training per (heads pruned per layer, FFN ratio) on the
   grid 3, 4, 5, 6 x 0.3, 0.4, 0.5, and the full baseline; every point charged the whole search.
2. The stop-time ablation (`earlybert ablate stop`): one search run to 1 epoch with the early-bird rule off, the
   ticket drawn from the coefficients at 0.01, 0.05, 0.1, 0.2, 0.4 and 1 epoch, a slim training per stop time,
   each charged the search up to its step.
3. MLM-objective search against the task-loss search (`--search-objective mlm`), only with --mlm-model: a
   checkpoint with masked-LM head weights (MiniLM-L6 ships none, so it cannot search on the MLM loss).
4. A target saving (`finetune --target-saving`, default 0.45): the ratios the tool picks, the saving it predicted,
   its own estimate after the run, and the saving measured against the sweep's full baseline (same seed and data).

Every part uses the package's defaults (the gate learning rate, the early-bird rule, 2 slim epochs at 2x lr) on a
fixed 10,000-sentence subset of SST-2's training set, seed 1, evaluated on the whole dev set.

    python bench/tradeoff.py                       # sweep, then stop-time ablation (resumable: rerun to continue)
    python bench/tradeoff.py --parts sweep         # one part
    python bench/tradeoff.py --parts mlm --mlm-model DIR
    python bench/tradeoff.py --parts target      # after the sweep, whose full baseline it is measured against

Runs live in bench/runs/tradeoff/ (not committed); the summary goes to bench/results/tradeoff_cpu.json and .md
(and the figures beside them) after every part, a partial part marked as such.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if (ROOT / "src" / "earlybert").is_dir():
    sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from earlybert.ablate import STOP_AT, ablate_stop  # noqa: E402
from earlybert.compare import compare  # noqa: E402
from earlybert.finetune import FinetuneConfig  # noqa: E402
from earlybert.runs import atomic_write_text  # noqa: E402
from earlybert.sweep import FFN_RATIOS, HEADS, make_grid, parse_values, summarise, sweep  # noqa: E402
from earlybert.target import finetune_to_target  # noqa: E402

from machine import cpu_name, minilm_path, mixed_precision  # noqa: E402

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data" / "glue"
TRAIN_SAMPLES = 10_000
PARTS = ("sweep", "stop", "mlm", "target")
TARGET_SAVING = 0.45  # the saving the GLUE benchmark aims at


def base_config(args, output: Path, model: str | None = None) -> FinetuneConfig:
    return FinetuneConfig(model=model or args.model or minilm_path(), task="sst2", data=str(args.data),
                          output=str(output), method="earlybert", seed=args.seed,
                          max_train_samples=args.train_samples, mixed_precision=mixed_precision())


def run_mlm(args, runs: Path) -> dict:
    """Full, EarlyBERT with the task-loss search and EarlyBERT with the MLM-objective search, one seed, on the model
    of --mlm-model: the methods of `compare`, the second EarlyBERT in a folder of its own."""
    base = base_config(args, runs / "mlm", args.mlm_model)
    task = compare(replace(base, output=str(runs / "mlm" / "task")), ["full", "earlybert"], [args.seed], resume=True)
    mlm = compare(replace(base, output=str(runs / "mlm" / "mlm"), search_objective="mlm"), ["earlybert"],
                  [args.seed], resume=True)
    full, by_task, by_mlm = task[0], task[1], mlm[0]

    def row(run: dict) -> dict:
        search = run["stages"].get("search", {})
        return {"score": run["score"], "total_step_time_s": run["total_step_time_s"],
                "time_saved": 1 - run["total_step_time_s"] / full["total_step_time_s"],
                "search_steps": search.get("steps"), "search_stop": search.get("stop_reason")}

    config = json.loads((Path(args.mlm_model) / "config.json").read_text())
    shape = (f"{config['num_hidden_layers']} layers, hidden {config['hidden_size']}, {config['num_attention_heads']} "
             f"heads, FFN {config['intermediate_size']}")
    return {"model": args.mlm_model, "shape": shape,
            "ticket": {k: {"kept_heads": r["ticket"]["kept_heads"], "kept_ffn": r["ticket"]["kept_ffn"]}
                       for k, r in (("task_search", by_task), ("mlm_search", by_mlm))},
            "full": {"score": full["score"], "total_step_time_s": full["total_step_time_s"]},
            "task_search": row(by_task), "mlm_search": row(by_mlm)}


def direction(points: list[dict]) -> dict | None:
    """The paper's direction on the grid: more pruning saves more time and scores lower. Rank correlations of the
    measured saving and the score with the FLOP saving (the amount pruned), and every pair of grid neighbours (one
    more head per layer, or the next FFN ratio) where the measured saving falls or the score rises."""
    from scipy.stats import spearmanr

    if len(points) < 3:
        return None
    by = {(p["heads"], p["ffn_ratio"]): p for p in points}
    heads, ratios = sorted({p["heads"] for p in points}), sorted({p["ffn_ratio"] for p in points})
    neighbours = [((h, r), (heads[i + 1], r)) for i, h in enumerate(heads[:-1]) for r in ratios] + \
                 [((h, r), (h, ratios[i + 1])) for i, r in enumerate(ratios[:-1]) for h in heads]
    neighbours = [(by[a], by[b]) for a, b in neighbours if a in by and b in by]
    name = lambda p: f"{p['heads']}h/{p['ffn_ratio']:.0%}"  # noqa: E731
    flops = [p["theoretical_saved"] for p in points]
    return {
        "spearman_time_saved_vs_flops": float(spearmanr(flops, [p["time_saved"] for p in points]).statistic),
        "spearman_score_vs_flops": float(spearmanr(flops, [p["score"] for p in points]).statistic),
        "neighbours": len(neighbours),
        "time_saved_falls": [f"{name(a)} -> {name(b)}: {a['time_saved']:.1%} -> {b['time_saved']:.1%}"
                             for a, b in neighbours if b["time_saved"] < a["time_saved"]],
        "score_rises": [f"{name(a)} -> {name(b)}: {a['score']:.2f} -> {b['score']:.2f}"
                        for a, b in neighbours if b["score"] > a["score"]],
    }


def run_target(args, runs: Path) -> dict:
    """`finetune --target-saving` on the sweep's data and seed: the pick, the predicted saving, the run's own
    estimate, and the saving against the sweep's full baseline, when that has run."""
    out = runs / "target"
    result = finetune_to_target(base_config(args, out), args.target_saving, resume=True)
    run = json.loads((out / result["run"] / "results.json").read_text())
    full_file = runs / "sweep" / f"full-seed{args.seed}" / "results.json"
    full = json.loads(full_file.read_text()) if full_file.exists() else None
    # The sweep's full run is from another process and sitting, and this machine's speed drifts by several percent
    # within an hour. Both sittings ran the same search (same data, seed and settings: the same computation), so
    # the ratio of its step times measures the drift, and the full baseline is scaled by it.
    sweep_search_file = runs / "sweep" / f"search-seed{args.seed}" / "results.json"
    speed = None
    if full and sweep_search_file.exists():
        then = json.loads(sweep_search_file.read_text())["stage"]
        now = json.loads((out / "search" / "results.json").read_text())["stage"]
        if then["steps"] == now["steps"]:
            speed = now["step_time_s"] / then["step_time_s"]
    return {"target": args.target_saving, "picked": result["picked"], "score": result["score"],
            "predicted_saving": result["predicted_saving"], "predicted_saving_flops": result["predicted_saving_flops"],
            "estimated_saving": result["measured_saving"],
            "measured_saving": full and 1 - run["total_step_time_s"] / full["total_step_time_s"],
            "search_speed_vs_sweep": speed,
            "measured_saving_drift_corrected":
                speed and 1 - run["total_step_time_s"] / (speed * full["total_step_time_s"]),
            "full_score": full and full["score"], "search_steps": run["stages"]["search"]["steps"],
            "search_stop": run["stages"]["search"]["stop_reason"]}


def stop_results(runs: Path) -> dict | None:
    done = runs / "stop" / "results.json"
    return json.loads(done.read_text()) if done.exists() else None


def write_results(args, runs: Path, started: float, parts: dict) -> None:
    grid = make_grid(args.heads, args.ffn_ratios)
    swept = summarise(runs / "sweep", grid, [args.seed]) if (runs / "sweep").is_dir() else None
    points = [{"heads": p["heads"], "ffn_ratio": p["ffn_ratio"], "score": p["score"], "time_saved": p["time_saved"],
               "theoretical_saved": p["theoretical_saved"], "kept_heads": p["kept_heads"], "kept_ffn": p["kept_ffn"]}
              for p in (swept or {}).get("points", []) if p["seeds"]]
    results = {
        "command": " ".join(["python", *sys.argv]), "commands": parts.get("commands", []),
        "machine": {"cpu": cpu_name(), "python": platform.python_version(), "torch": torch.__version__},
        "settings": {"task": "sst2", "train_samples": args.train_samples, "seed": args.seed,
                     "heads": args.heads, "ffn_ratios": args.ffn_ratios, "stop_at": list(STOP_AT)},
        "full": swept and swept["full"], "search": swept and swept["search"], "points": points,
        "direction": direction(points),
        "sweep_finished": bool(swept) and swept["runs_finished"] == swept["runs_total"],
        "stop": stop_results(runs), "mlm_vs_task": parts.get("mlm"), "target_saving": parts.get("target"),
        "notes": parts.get("notes", []),
        "elapsed_s": time.time() - started,
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".json"), json.dumps(results, indent=1) + "\n")
    model = Path(args.model).name if args.model else "MiniLM-L6"
    lines = [f"# Trade-off on SST-2 ({args.train_samples} training sentences), seed {args.seed}", "",
             f"Sweep and stop-time ablation: {model}.  ",
             "Commands (the parts run by each, in order): " + ", ".join(f"`{c}`" for c in results["commands"]) + "  ",
             f"Machine: {results['machine']['cpu']}, torch "
             f"{results['machine']['torch']}, {torch.get_num_threads()} thread(s).", ""]
    for name, title in (("sweep", "Sweep: heads pruned per layer x FFN ratio"),
                        ("stop", "Stop-time ablation")):
        report = runs / name / "report.md"
        if report.exists():
            figure = runs / name / ("tradeoff.png" if name == "sweep" else "ablation.png")
            if figure.exists():
                shutil.copyfile(figure, out.with_name(f"{out.name}_{name}.png"))
            body = report.read_text().split("\n", 1)[1].replace("](tradeoff.png)", f"]({out.name}_sweep.png)")
            lines += [f"## {title}", body.replace("](ablation.png)", f"]({out.name}_stop.png)"), ""]
            if name == "sweep" and results["direction"]:
                d = results["direction"]
                lines += ["The paper's direction (more pruning: more time saved, lower score), over the grid: rank "
                          f"correlation with the FLOP saving {d['spearman_time_saved_vs_flops']:+.2f} for the "
                          f"measured saving, {d['spearman_score_vs_flops']:+.2f} for the score. Of {d['neighbours']} "
                          "pairs of grid neighbours (one more head pruned per layer, or the next FFN ratio), the "
                          f"measured saving falls in {len(d['time_saved_falls'])}"
                          + (f" ({'; '.join(d['time_saved_falls'])})" if d["time_saved_falls"] else "")
                          + f" and the score rises in {len(d['score_rises'])}"
                          + (f" ({'; '.join(d['score_rises'])})" if d["score_rises"] else "") + ".", ""]
    if results["mlm_vs_task"]:
        m = results["mlm_vs_task"]
        lines += ["## MLM-objective search against task-loss search", "",
                  f"Model: {m['model']} ({m.get('shape', '?')}), the same protocol as above; kept heads / FFN "
                  "neurons per layer: " + "; ".join(f"{k.split('_')[0]} search {v['kept_heads']} / {v['kept_ffn']}"
                                                    for k, v in m.get("ticket", {}).items()), "",
                  "| search | score | time saved | search steps |", "|---|---|---|---|",
                  *(f"| {k} | {m[k]['score']:.2f} | {m[k]['time_saved']:.1%} | {m[k]['search_steps']} "
                    f"({m[k]['search_stop']}) |" for k in ("task_search", "mlm_search")),
                  f"| (full fine-tuning) | {m['full']['score']:.2f} | 0 | - |", ""]
    if results["target_saving"]:
        t = results["target_saving"]
        measured = "not measured (no sweep baseline)" if t["measured_saving"] is None else \
            f"{t['measured_saving']:.1%} against the sweep's full baseline (score {t['full_score']:.2f})"
        if t.get("search_speed_vs_sweep"):
            measured += (f", {t['measured_saving_drift_corrected']:.1%} with that baseline scaled by the machine's "
                         f"drift between the sittings (the same search took {t['search_speed_vs_sweep']:.3f}x "
                         "the sweep's step time)")
        lines += [f"## Target saving {t['target']:.0%} (`finetune --target-saving {t['target']:g}`)", "",
                  f"Picked {t['picked']['heads']} heads pruned per layer and {t['picked']['ffn_ratio']:.0%} of the FFN "
                  f"neurons; predicted saving {t['predicted_saving']:.1%} (linear FLOPs: "
                  f"{t['predicted_saving_flops']:.1%}); the run's own estimate {t['estimated_saving']:.1%}; measured "
                  f"{measured}. Score {t['score']:.2f}; search {t['search_steps']} steps ({t['search_stop']}).", ""]
    lines += [f"- {n}" for n in results["notes"]]
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="sweep,stop", help=f"comma-separated: {', '.join(PARTS)}")
    parser.add_argument("--data", default=str(DATA), help="GLUE folder holding SST-2/")
    parser.add_argument("--model", default=None, help="model folder (default: the MiniLM-L6 package's)")
    parser.add_argument("--mlm-model", default=None, help="a checkpoint with masked-LM head weights, for part mlm")
    parser.add_argument("--heads", default=",".join(map(str, HEADS)), help="heads pruned per layer, the sweep's grid")
    parser.add_argument("--ffn-ratios", default=",".join(map(str, FFN_RATIOS)), help="FFN ratios, the sweep's grid")
    parser.add_argument("--train-samples", type=int, default=TRAIN_SAMPLES)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--target-saving", type=float, default=TARGET_SAVING, help="part target: the saving asked for")
    parser.add_argument("--runs", default=str(HERE / "runs" / "tradeoff"))
    parser.add_argument("--output", default=str(HERE / "results" / "tradeoff_cpu"))
    args = parser.parse_args()
    args.heads, args.ffn_ratios = parse_values(args.heads, "heads"), parse_values(args.ffn_ratios, "ffn_ratios")
    parts = [p for p in args.parts.split(",") if p]
    if any(p not in PARTS for p in parts):
        raise SystemExit(f"tradeoff.py: error: --parts takes {', '.join(PARTS)}; got {args.parts!r}")
    if "mlm" in parts and not args.mlm_model:
        raise SystemExit("tradeoff.py: error: --parts mlm needs --mlm-model, a checkpoint with masked-LM head weights")
    logging.basicConfig(level=logging.WARNING)
    runs, started, done = Path(args.runs), time.time(), {"notes": []}
    previous = Path(args.output).with_suffix(".json")
    if previous.exists():  # a part run in an earlier sitting keeps its result
        earlier = json.loads(previous.read_text())
        done["mlm"], done["target"] = earlier.get("mlm_vs_task"), earlier.get("target_saving")
        done["commands"] = earlier.get("commands") or [earlier["command"]]
    command = " ".join(["python", *sys.argv])
    done["commands"] = [c for c in done.get("commands", []) if c != command] + [command]
    for part in parts:
        print(f"== {part}", flush=True)
        if part == "sweep":
            sweep(base_config(args, runs / "sweep"), args.heads, args.ffn_ratios, [args.seed], resume=True)
        elif part == "stop":
            ablate_stop(base_config(args, runs / "stop"), STOP_AT, resume=True)
        elif part == "target":
            done["target"] = run_target(args, runs)
        else:
            done["mlm"] = run_mlm(args, runs)
        write_results(args, runs, started, done)
    write_results(args, runs, started, done)
    print(Path(args.output).with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
