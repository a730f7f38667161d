"""Where the early-bird rule stops, replayed on the masks that real searches recorded.

Every EarlyBERT run keeps its search's mask history (mask_history.json: the mask that would have been drawn at each
recorded step). This script replays the library's early-bird rule (earlybert.search, its defaults) and the
paper's rule (the previous 5 records within epsilon) on those histories, recording every step and every 4th step,
and reports where each would have stopped and how far the ticket drawn there is from the ticket of the search's
last recorded step: the whole budget's ticket where the search ran to its budget. No training runs here: the
histories are read from the run folders of bench/finetune_glue.py and bench/gate_lr.py.

    python bench/early_bird.py                                   # the GLUE tables' runs, both learning rates
    python bench/early_bird.py --runs 'bench/runs/gate_lr/*' --output bench/results/early_bird_gate_lr

Results: bench/results/early_bird_cpu.json and .md.
"""

from __future__ import annotations

import argparse
import glob
import json
import shlex
import statistics
import sys
from pathlib import Path

from earlybert.runs import atomic_write_text
from earlybert.search import EarlyBird, SearchConfig

HERE = Path(__file__).resolve().parent
DEFAULT_RUNS = ["bench/runs/finetune_glue_lr4e-5/*/earlybert-seed*", "bench/runs/finetune_glue/*/earlybert-seed*"]
RULES = {"paper": {"window": 0.0}, "default": {}}  # SearchConfig overrides; {} = the library's defaults


def replay(history: EarlyBird, budget: int, every: int, overrides: dict) -> dict | None:
    """The step where the rule would have stopped (records every `every` steps), with the distance (heads, FFN) of
    the ticket drawn there to the ticket of the history's last step; None if it would not have fired."""
    tracker = EarlyBird(search_config=SearchConfig(max_steps=budget, **overrides))
    tracker.num_heads, tracker.ffn_sizes = history.num_heads, history.ffn_sizes
    heads, ffn = history.distance_matrix("heads"), history.distance_matrix("ffn")
    for i, step in enumerate(history.steps):
        if step % every and step != history.steps[-1]:
            continue
        tracker.steps.append(step)
        tracker.head_masks.append(history.head_masks[i])
        tracker.ffn_masks.append(history.ffn_masks[i])
        if tracker.converged():
            return {"step": step, "heads_to_last": float(heads[i, -1]), "ffn_to_last": float(ffn[i, -1])}
    return None


def one_run(folder: Path) -> dict | None:
    results_path, history_path = folder / "results.json", folder / "mask_history.json"
    if not (results_path.exists() and history_path.exists()):
        return None
    search = json.loads(results_path.read_text())["stages"]["search"]
    history = EarlyBird()
    history.load_state_dict(json.loads(history_path.read_text()))
    budget = search["budget"]
    return {"run": folder.as_posix(), "task": folder.parent.name, "seed": folder.name.rsplit("seed", 1)[-1],
            "budget": budget, "recorded_to": history.steps[-1], "stop_reason": search["stop_reason"],
            "record_every": history.steps[1] - history.steps[0] if len(history.steps) > 1 else 1,
            "rules": {name: {f"every_{e}": replay(history, budget, e, o) for e in (1, 4)} for name, o in RULES.items()}}


def _cell(v: dict | None) -> str:
    return "-" if v is None else f"{v['step']} ({v['heads_to_last']:.2f}/{v['ffn_to_last']:.2f})"


def to_markdown(result: dict) -> str:
    defaults = SearchConfig(max_steps=1)
    lines = [
        "# The early-bird rule replayed on recorded searches (MiniLM-L6, GLUE, CPU)", "",
        f"Command: `{result['command']}`  ",
        f"Library rule: window {defaults.window} of the budget, epsilon {defaults.epsilon} (earlybert.search); "
        f"paper's rule: the previous {defaults.patience} records within epsilon.", "",
        "Each cell: the step where the rule would have stopped, recording every step; every 4th step; in brackets "
        "the normalised mask distance (heads/FFN) from the ticket drawn there to the ticket of the last recorded "
        "step, which is the whole budget's ticket where the run searched to its budget ('recorded to' = budget). "
        "'-': no stop before the history ends.", "",
        "| run | budget | recorded to (run's stop) | paper, every 1 | paper, every 4 | default, every 1 | "
        "default, every 4 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        p, d = r["rules"]["paper"], r["rules"]["default"]
        lines.append(f"| {r['run']} | {r['budget']} | {r['recorded_to']} ({r['stop_reason']}) | "
                     f"{_cell(p['every_1'])} | {_cell(p['every_4'])} | {_cell(d['every_1'])} | {_cell(d['every_4'])} |")
    s = result["summary"]
    lines += ["", "## Summary over the runs that searched to their budget", "",
              f"- runs: {s['runs']}; the default rule stopped before the budget in {s['fired_before_budget']} "
              f"(recording every step), in {s['fired_before_budget_every_4']} recording every 4th step",
              f"- ticket drawn at the stop against the whole budget's ticket: FFN distance mean {s['ffn_mean']:.3f}, "
              f"max {s['ffn_max']:.3f}; heads mean {s['heads_mean']:.3f}, max {s['heads_max']:.3f}",
              f"- search steps saved: {s['steps_saved_share']:.1%} of the budget on average",
              f"- same verdict to within the recording interval (every 1 vs every 4): {s['interval_consistent']} of "
              f"{s['runs']}", ""]
    return "\n".join(lines)


def summarize(runs: list[dict]) -> dict:
    full = [r for r in runs if r["recorded_to"] == r["budget"] and r["record_every"] == 1]
    fired = [r for r in full if r["rules"]["default"]["every_1"] and r["rules"]["default"]["every_1"]["step"] < r["budget"]]
    fired4 = [r for r in full if r["rules"]["default"]["every_4"] and r["rules"]["default"]["every_4"]["step"] < r["budget"]]
    stops = [r["rules"]["default"]["every_1"] for r in full if r["rules"]["default"]["every_1"]]

    def consistent(r):
        a, b = r["rules"]["default"]["every_1"], r["rules"]["default"]["every_4"]
        return (a is None) == (b is None) and (a is None or abs(a["step"] - b["step"]) < 4)

    return {"runs": len(full), "fired_before_budget": len(fired), "fired_before_budget_every_4": len(fired4),
            "ffn_mean": statistics.fmean(v["ffn_to_last"] for v in stops) if stops else 0.0,
            "ffn_max": max((v["ffn_to_last"] for v in stops), default=0.0),
            "heads_mean": statistics.fmean(v["heads_to_last"] for v in stops) if stops else 0.0,
            "heads_max": max((v["heads_to_last"] for v in stops), default=0.0),
            "steps_saved_share": statistics.fmean(
                (r["budget"] - (r["rules"]["default"]["every_1"] or {"step": r["budget"]})["step"]) / r["budget"]
                for r in full) if full else 0.0,
            "interval_consistent": sum(consistent(r) for r in full)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", action="append", help="glob of EarlyBERT run folders (repeatable)")
    parser.add_argument("--output", default=str(HERE / "results" / "early_bird_cpu"))
    args = parser.parse_args()
    folders = sorted({Path(p) for pattern in (args.runs or DEFAULT_RUNS) for p in glob.glob(pattern)})
    runs = [r for r in map(one_run, folders) if r is not None]
    if not runs:
        raise SystemExit(f"no run folder with results.json and mask_history.json matches {args.runs or DEFAULT_RUNS}")
    result = {"command": "python " + shlex.join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
              "runs": runs, "summary": summarize(runs)}
    out = Path(args.output)
    atomic_write_text(out.with_suffix(".json"), json.dumps(result, indent=1))
    atomic_write_text(out.with_suffix(".md"), to_markdown(result))
    print(to_markdown(result))


if __name__ == "__main__":
    main()
