"""EarlyBERT fine-tuning against its baselines on GLUE with MiniLM-L6 (the paper's Table 2 protocol, at CPU scale).

For each seed and task, taking turns in slices of --slice steps (`earlybert compare`: each pauses at a
checkpoint and resumes) so that a drift in the machine's speed falls on all alike: full fine-tuning
(3 epochs, lr 2e-5), EarlyBERT (search <= 0.2 epoch with the package's defaults, 1/3 heads per layer and 40% FFN
globally, 2 epochs at 4e-5) and a random ticket of EarlyBERT's per-layer shape (same protocol, no search);
LayerDrop (rate 1/3 for 3 epochs, then every third layer removed) at the first seed only, after all seeds of the
others. Time is the per-step protocol's total (forward, backward, optimizer; data loading excluded; the first 3
steps of every stage counted at the stage's mean), EarlyBERT's including its search.

    python bench/finetune_glue.py                                  # all tasks, seeds 1,2,3 (resumable)
    python bench/finetune_glue.py --tasks sst2,rte --seeds 1       # a subset
    python bench/finetune_glue.py --lr 4e-5 --runs bench/runs/finetune_glue_lr4e-5 \
        --output bench/results/finetune_glue_cpu_lr4e-5            # the table at a baseline rate MiniLM learns more at

Runs live in bench/runs/ (not committed) and are kept: rerunning the command continues where it stopped, also
in another sitting (each run's results.json records its machine time; every (task, seed) group runs in one
sitting). The summary goes to bench/results/finetune_glue_cpu.json and .md after every group. That JSON is also
the ledger a fresh checkout continues from: the finished runs it lists are put back into the runs folder (see
`restore`), so committing it after each sitting carries the table over to another machine; `groups` says which
machine each (task, seed) group ran on, since a time saving is a ratio within one group.

On a GPU (bf16 autocast, the whole of SST-2, checkpoints off, stop starting new groups when the budget runs out),
with the GLUE folders and the model brought along (bench/gpu.py --prepare writes both into gpu_payload/):

    python3 bench/finetune_glue.py --data gpu_payload/glue.tar.xz --model gpu_payload/minilm --train-samples all \
        --checkpoint-every 0 --slice 0 --budget-s 500 --runs /tmp/glue-runs --output "$OUT/finetune_glue_h100"

Data: ../shared/data/glue (or --data). Training sets (CPU default): SST-2 a fixed 10,000-sentence subset; CoLA, MRPC, STS-B and RTE whole.
QNLI has no training file there, so its dev set is split deterministically (seed 0): 2,000 pairs for training,
the other 3,463 for evaluation; this is not comparable to QNLI results.
bf16 autocast where the CPU has native bf16 instructions (avx512_bf16 / AMX), fp32 elsewhere (recorded).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import random
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if (ROOT / "src" / "earlybert").is_dir():  # a GPU machine runs the repository as is, not an installed package
    sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402
from scipy import stats  # noqa: E402

from earlybert.compare import SLICE_STEPS, compare  # noqa: E402
from earlybert.finetune import FinetuneConfig  # noqa: E402
from earlybert.report import comparison_table  # noqa: E402
from earlybert.runs import atomic_write_text  # noqa: E402
from earlybert.ticket import TicketConfig  # noqa: E402

from machine import cpu_name, minilm_path, mixed_precision  # noqa: E402  (bench/ is the script's folder)

logger = logging.getLogger("finetune_glue")

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data" / "glue"
TASKS = ["sst2", "qnli", "mrpc", "rte", "cola", "stsb"]
TRAIN_SAMPLES = "sst2=10000"  # the others train on their whole training set
CORE = ["full", "earlybert", "random"]
# Diagnostic variants (--variants), run after the core methods of a (task, seed) group, each in its own folder:
# which part of EarlyBERT's protocol costs the accuracy it loses on a task.
VARIANTS = {
    # lr_times: a multiple of the run's baseline rate (--lr), which the variant's full model trains at
    "full-short": ("full", dict(epochs=2, lr_times=2)),  # EarlyBERT's training length and rate on the full model
    "full-lr2x": ("full", dict(lr_times=2)),  # full's 3 epochs at 2x: is the baseline's own rate too low for MiniLM?
    "earlybert-long": ("earlybert", dict(earlybert_epochs=3)),  # the slim model trained as long as full
    "earlybert-lr1x": ("earlybert", dict(lr_scale=1.0)),  # the slim model at full's learning rate, not 2x
    "earlybert-lr3x": ("earlybert", dict(lr_scale=3.0)),  # ... at 3x: does a slim model on a small set need more?
    "random-lr3x": ("random", dict(lr_scale=3.0)),  # the random ticket (EarlyBERT's shape, same seed) at 3x
    "earlybert-lr4x": ("earlybert", dict(lr_scale=4.0)),
    "random-lr4x": ("random", dict(lr_scale=4.0)),
    "earlybert-heads": ("earlybert", dict(ticket=TicketConfig(ffn_ratio=0.0))),  # heads only (paper Table 1)
    "earlybert-ffn": ("earlybert", dict(ticket=TicketConfig(head_ratio=0.0))),  # FFN neurons only
}
VARIANT_EPOCHS = {"full-short": 2, "full-lr2x": 3, "earlybert-long": 3.2, "earlybert-lr1x": 2.2, "earlybert-lr3x": 2.2,
                  "random-lr3x": 2, "earlybert-lr4x": 2.2, "random-lr4x": 2, "earlybert-heads": 2.2, "earlybert-ffn": 2.2}
FOLDERS = {"sst2": "SST-2", "qnli": "QNLI", "mrpc": "MRPC", "rte": "RTE", "cola": "CoLA", "stsb": "STS-B"}


def parse_samples(text: str) -> dict[str, int]:
    """'sst2=10000,cola=500' -> caps per task; 'all' -> none (every task trains on its whole set)."""
    if text == "all":
        return {}
    caps = {}
    for item in text.split(","):
        task, _, n = item.partition("=")
        if task not in TASKS or not n.isdigit() or int(n) < 1:
            raise SystemExit(f"finetune_glue.py: error: --train-samples takes all or TASK=N,...; got {text!r}")
        caps[task] = int(n)
    return caps


def qnli_split(out: Path, source: Path = DATA, n_train: int = 2000) -> Path:
    """QNLI in the GLUE layout from its dev set: a fixed split into training and held-out pairs."""
    target = out / "QNLI"
    if (target / "dev.tsv").exists():
        return out
    with open(source / "QNLI" / "dev.tsv", encoding="utf-8") as f:
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


def collect_variants(runs_dir: Path) -> list[dict]:
    runs = []
    for path in sorted((runs_dir / "variants").glob("*/*/*/results.json")):
        runs.append({**json.loads(path.read_text()), "variant": path.parent.parent.name})
    return runs


def variant_summary(runs: list[dict], variants: list[dict]) -> dict:
    """Per task and variant: mean score, and the mean over seeds of score and time saved against full fine-tuning
    of the same task and seed."""
    full = {(r["task"], r["seed"]): r for r in runs if r["method"] == "full"}
    out: dict = {}
    for v in variants:
        base = full.get((v["task"], v["seed"]))
        entry = out.setdefault(v["task"], {}).setdefault(v["variant"], {"seeds": [], "score": [], "minus_full": [],
                                                                        "time_saved": []})
        entry["seeds"].append(v["seed"])
        entry["score"].append(v["score"])
        if base is not None:
            entry["minus_full"].append(v["score"] - base["score"])
            entry["time_saved"].append(1 - v["total_step_time_s"] / base["total_step_time_s"])
        # earlybert-<x> against random-<x> of the same task and seed: the ticket's worth under that protocol
        # full-lr2x trains full's steps at another rate, in the same sitting as the variants: against it, time saved
        # is not confounded by the machine's drift between sittings (the core full run may be days older)
        same_sitting = next((r for r in variants if r["variant"] == "full-lr2x" and r is not v
                             and (r["task"], r["seed"]) == (v["task"], v["seed"])), None)
        if same_sitting is not None:
            entry.setdefault("time_saved_same_sitting", []).append(
                1 - v["total_step_time_s"] / same_sitting["total_step_time_s"])
        twin = next((r for r in variants if r["variant"] == v["variant"].replace("earlybert-", "random-", 1)
                     and v["variant"].startswith("earlybert-") and (r["task"], r["seed"]) == (v["task"], v["seed"])),
                    None)
        if twin is not None:
            entry.setdefault("minus_random", []).append(v["score"] - twin["score"])
    return out


def variant_pairs(variants: dict, name: str) -> dict | None:
    """Over every task and seed that ran variant `name` (an earlybert-<x> with its random-<x>): the paired
    differences against full and against the random ticket, as the core table's summary states them."""
    rows = [v for by in variants.values() for n, v in by.items() if n == name]
    minus_full = [d for v in rows for d in v["minus_full"]]
    minus_random = [d for v in rows for d in v.get("minus_random", [])]
    if not minus_full:
        return None
    return {"variant": name, "tasks": sum(1 for v in rows if v["minus_full"]),
            "minus_full": interval(minus_full), "minus_random": interval(minus_random) if minus_random else None,
            "time_saved": statistics.fmean(t for v in rows for t in v["time_saved"]),
            "time_saved_same_sitting": statistics.fmean(same) if (same := [t for v in rows for t in
                                                                           v.get("time_saved_same_sitting", [])]) else None}


def interval(values: list[float]) -> dict:
    """Mean and 95% t-interval of paired differences."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return {"mean": mean, "ci95": None, "n": len(values)}
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
    return {"mean": mean, "ci95": [mean - half, mean + half], "n": len(values)}


def summary(runs: list[dict]) -> dict:
    """The issue's three figures over every (task, seed) where full, EarlyBERT and random all finished.

    earlybert_minus_full / _random: points, the mean over tasks of each task's mean paired difference (equal to
    the mean over all pairs when every task has the same seeds), with the 95% t-interval over all pairs;
    time_saved: 1 - EarlyBERT's total step time (search included) / full's, the mean over tasks likewise."""
    by_key = {(r["task"], r["seed"], r["method"]): r for r in runs}
    complete = sorted({(t, s) for t, s, _ in by_key if all((t, s, m) in by_key for m in CORE)},
                      key=lambda k: (TASKS.index(k[0]), k[1]))
    if not complete:
        return {}
    pairs = {"full": {}, "random": {}, "time": {}, "random_time": {}, "estimate_error": {}, "search": {}}
    for task, seed in complete:
        full, eb, rnd = (by_key[(task, seed, m)] for m in CORE)
        saved = 1 - eb["total_step_time_s"] / full["total_step_time_s"]
        pairs["full"].setdefault(task, []).append(eb["score"] - full["score"])
        pairs["random"].setdefault(task, []).append(eb["score"] - rnd["score"])
        pairs["time"].setdefault(task, []).append(saved)
        pairs["random_time"].setdefault(task, []).append(1 - rnd["total_step_time_s"] / full["total_step_time_s"])
        if eb.get("fraction_saved_vs_estimated_full") is not None:
            pairs["estimate_error"].setdefault(task, []).append(eb["fraction_saved_vs_estimated_full"] - saved)
        search = eb["stages"]["search"]
        pairs["search"].setdefault(task, []).append(
            {"seed": seed, "steps": search["steps"], "budget": search.get("budget"), "stop": search["stop_reason"]})

    def over_tasks(kind):
        return statistics.fmean(statistics.fmean(v) for v in pairs[kind].values())

    tasks = list(pairs["full"])
    out = {
        "tasks": tasks,
        "seeds": sorted({s for _, s in complete}),
        "pairs": len(complete),
        "earlybert_minus_full": over_tasks("full"),
        "earlybert_minus_random": over_tasks("random"),
        "time_saved": over_tasks("time"),
        "earlybert_minus_full_all_pairs": interval([d for v in pairs["full"].values() for d in v]),
        "earlybert_minus_random_all_pairs": interval([d for v in pairs["random"].values() for d in v]),
        "time_saved_all_pairs": interval([d for v in pairs["time"].values() for d in v]),
        "per_task": {t: {"earlybert_minus_full": statistics.fmean(pairs["full"][t]),
                         "earlybert_minus_random": statistics.fmean(pairs["random"][t]),
                         "time_saved": statistics.fmean(pairs["time"][t]),
                         "searches": pairs["search"][t]} for t in tasks},
    }
    errors = [e for v in pairs["estimate_error"].values() for e in v]
    if errors:
        out["single_run_estimate_minus_measured"] = {"mean": statistics.fmean(errors),
                                                     "max_abs": max(abs(e) for e in errors),
                                                     "within_3_points": sum(abs(e) <= 0.03 for e in errors),
                                                     "n": len(errors)}
    # The measured saving's own noise floor: the random ticket has the same size in every seed and no search, so
    # the spread of its saving within a task is what two processes' step times differ by (pooled over tasks).
    spreads = [statistics.variance(v) for v in pairs["random_time"].values() if len(v) > 1]
    if spreads:
        out["random_time_saved_std_within_task"] = statistics.fmean(spreads) ** 0.5
    return out


def _ci(entry: dict, scale: float = 1.0, spec: str = ".2f") -> str:
    if entry["ci95"] is None:
        return f"{entry['mean'] * scale:{spec}}"
    lo, hi = (v * scale for v in entry["ci95"])
    return f"{entry['mean'] * scale:{spec}} [{lo:{spec}}, {hi:{spec}}]"


def machine_info(mixed: str) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": cpu_name(), "mixed_precision": mixed}
    if torch.cuda.is_available():
        info |= {"gpu": torch.cuda.get_device_name(0), "cuda": torch.version.cuda}
    return info


# The settings that make two sittings' runs one table: a ledger made with other values is refused, not extended.
TABLE_SETTINGS = ("lr", "max_length", "train_samples", "slice", "model", "pad_to_multiple_of")


def restore(args) -> dict[str, dict]:
    """Continue from the results JSON when the runs folder lacks its runs (a fresh checkout, another machine).

    Every finished run the JSON lists (core and variant) whose results.json is missing is written back where
    compare() looks for it, so that its group counts as done and is not trained again; partial runs cannot be
    recovered this way and start over. Returns the JSON's `groups` (the machine each (task, seed) group ran on),
    the groups of a ledger written before it kept that taken to be its last sitting's machine."""
    ledger = Path(args.output).with_suffix(".json")
    if not ledger.exists():
        return {}
    saved = json.loads(ledger.read_text())
    settings = saved.get("settings", {})
    differing = [f"--{k.replace('_', '-')} {settings[k]} (this run: {getattr(args, k)})" for k in TABLE_SETTINGS
                 if k in settings and settings[k] != getattr(args, k)]
    if differing:
        raise SystemExit(f"finetune_glue.py: error: {ledger} holds a table made with {', '.join(differing)}; "
                         "rerun with its settings or give another --output")
    runs_dir, restored = Path(args.runs), 0
    for run in saved.get("runs", []):
        restored += _put_back(runs_dir / run["task"] / f"{run['method']}-seed{run['seed']}", run)
    for run in saved.get("variant_runs", []):
        run = dict(run)
        variant = run.pop("variant")  # added by collect_variants, not part of the run's own results.json
        restored += _put_back(runs_dir / "variants" / run["task"] / variant / f"{run['method']}-seed{run['seed']}", run)
    if restored:
        print(f"{restored} finished run(s) restored from {ledger} into {runs_dir}", flush=True)
    groups = dict(saved.get("groups", {}))
    for run in saved.get("runs", []):
        groups.setdefault(group_key(run["task"], run["seed"]), saved.get("machine", {}))
    return groups


def _put_back(run_dir: Path, run: dict) -> int:
    results = run_dir / "results.json"
    if results.exists():
        return 0
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(results, json.dumps(run, indent=1))
    return 1


def group_key(task: str, seed: int) -> str:
    return f"{task}/seed{seed}"


def redo(args) -> list[dict]:
    """Take (task, seed) groups out of the table so that the next run measures them again: `--redo rte:2,...`.

    For a group whose clock is known to be spoilt, e.g. one that trained while other work loaded the machine: a
    time saving is a ratio within one group, and a loaded stretch that falls on one method more than another
    moves it by many points. The group's core runs (full, EarlyBERT, random) leave the ledger's `runs` for its
    `discarded` list, with `--redo-reason` and the time, so the table shows what was dropped and why; their
    folders move to <runs>/discarded/<time>/ (nothing is deleted). The command then stops: rerun it without
    --redo to train the groups again (with --redo still given, a resumed table would discard them again)."""
    ledger = Path(args.output).with_suffix(".json")
    if not ledger.exists():
        raise SystemExit(f"finetune_glue.py: error: --redo: no table at {ledger}")
    if not args.redo_reason:
        raise SystemExit("finetune_glue.py: error: --redo needs --redo-reason (why the groups are measured again)")
    wanted = []
    for item in args.redo.split(","):
        task, _, seed = item.partition(":")
        if task not in TASKS or not seed.isdigit():
            raise SystemExit(f"finetune_glue.py: error: --redo takes TASK:SEED[,TASK:SEED], TASK one of "
                             f"{', '.join(TASKS)}; got {item!r}")
        wanted.append((task, int(seed)))
    saved = json.loads(ledger.read_text())
    when = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    runs_dir, discarded = Path(args.runs), []
    for task, seed in wanted:
        runs = [r for r in saved.get("runs", []) if (r["task"], r["seed"]) == (task, seed) and r["method"] in CORE]
        if not runs:
            raise SystemExit(f"finetune_glue.py: error: --redo: {ledger} has no runs of {task} seed {seed}")
        saved["runs"] = [r for r in saved["runs"] if not any(r is x for x in runs)]
        saved.get("groups", {}).pop(group_key(task, seed), None)
        discarded.append({"task": task, "seed": seed, "reason": args.redo_reason, "when": when, "runs": runs})
        for method in CORE:
            folder = runs_dir / task / f"{method}-seed{seed}"
            if folder.exists():  # three levels down, where collect() does not look
                (runs_dir / "discarded" / when / task).mkdir(parents=True, exist_ok=True)
                folder.rename(runs_dir / "discarded" / when / task / folder.name)
    saved["discarded"] = saved.get("discarded", []) + discarded
    atomic_write_text(ledger, json.dumps(saved, indent=1))
    return discarded


def without_redo(argv: list[str]) -> list[str]:
    """The command line without --redo and --redo-reason: the command that continues the table."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--redo", "--redo-reason"):
            skip = True
        elif not arg.startswith(("--redo=", "--redo-reason=")):
            kept.append(arg)
    return kept


def write_results(args, runs: list[dict], started: float, mixed: str, notes: list[str] = (),
                  groups: dict[str, dict] | None = None, command: str | None = None) -> None:
    rows, table = comparison_table(runs)
    summ = summary(runs)
    machine = machine_info(mixed)
    variant_runs = collect_variants(Path(args.runs))
    variants = variant_summary(runs, variant_runs)
    pairs = [p for p in (variant_pairs(variants, name) for name in VARIANTS if name.startswith("earlybert-")) if p]
    groups = groups or {}
    output = Path(args.output)
    ledger = output.with_suffix(".json")
    discarded = json.loads(ledger.read_text()).get("discarded", []) if ledger.exists() else []  # see redo()
    result = {"command": command or "python " + " ".join(sys.argv), "machine": machine, "settings": vars(args),
              "groups": groups, "summary": summ, "variants": variants, "variant_pairs": pairs, "notes": list(notes), "rows": rows,
              "runs": runs,
              "variant_runs": variant_runs, "discarded": discarded, "elapsed_s": time.time() - started}
    atomic_write_text(ledger, json.dumps(result, indent=1))
    caps = parse_samples(args.train_samples)
    sets = "; ".join([*(f"{FOLDERS[t]} a fixed {n:,}-example subset" for t, n in caps.items() if t != "qnli"),
                      f"{', '.join(FOLDERS[t] for t in TASKS if t not in caps and t != 'qnli')} whole"])
    padding = f", batches padded to a multiple of {args.pad_to_multiple_of} tokens" if args.pad_to_multiple_of else ""
    where = f"{machine['gpu']} (CUDA {machine['cuda']})" if "gpu" in machine else f"{machine['cpu']}, {machine['threads']} threads"
    lines = [
        f"# EarlyBERT fine-tuning vs baselines: MiniLM-L6 on GLUE ({'GPU' if 'gpu' in machine else 'CPU'})", "",
        f"Command: `{result['command']}`  ",
        f"Machine (this sitting): {where}, torch {machine['torch']}, mixed precision {mixed}  ",
        *_machines_line(groups),
        f"Training sets: {sets}; QNLI trains on 2,000 "
        "pairs of its dev set and is evaluated on the other 3,463 (see the script's docstring). Max length "
        f"{args.max_length}, batch 32{padding}. Scores in percent (CoLA: Matthews correlation x 100; STS-B: "
        "Pearson x 100).",
        "",
        *(f"- {note}" for note in notes), *([""] if notes else []),
        table, "",
        *(f"Discarded for a new measurement: {d['task']} seed {d['seed']} (its runs of {d['when']} are in the "
          f"JSON's `discarded`): {d['reason']}" for d in discarded), *([""] if discarded else []),
    ]
    if summ:
        lines += [
            f"## Summary over {summ['pairs']} (task, seed) pairs; tasks {', '.join(summ['tasks'])}; "
            f"seeds {', '.join(map(str, summ['seeds']))}", "",
            "| figure | mean over tasks | mean over all pairs [95% CI] | target |",
            "|---|---|---|---|",
            f"| EarlyBERT - full (points) | {summ['earlybert_minus_full']:+.2f} | "
            f"{_ci(summ['earlybert_minus_full_all_pairs'])} | >= -1.0 |",
            f"| EarlyBERT - random ticket (points) | {summ['earlybert_minus_random']:+.2f} | "
            f"{_ci(summ['earlybert_minus_random_all_pairs'])} | >= +1.0 |",
            f"| time saved vs full (search included) | {summ['time_saved']:.1%} | "
            f"{_ci(summ['time_saved_all_pairs'], 100, '.1f')} % | >= 45% |", "",
            "| task | EarlyBERT - full | EarlyBERT - random | time saved | search steps / budget (stop) |",
            "|---|---|---|---|---|",
            *(f"| {t} | {v['earlybert_minus_full']:+.2f} | {v['earlybert_minus_random']:+.2f} | "
              f"{v['time_saved']:.1%} | "
              + ", ".join(f"{x['steps']}/{x['budget']} ({x['stop']})" for x in v["searches"]) + " |"
              for t, v in summ["per_task"].items()),
            "",
        ]
        if "single_run_estimate_minus_measured" in summ:
            e = summ["single_run_estimate_minus_measured"]
            lines += [f"A single EarlyBERT run's own estimate of the time saved (paired slim/full step-time ratio) "
                      f"minus the measured saving: mean {e['mean'] * 100:+.1f} points, largest {e['max_abs'] * 100:.1f}, "
                      f"within 3 points in {e['within_3_points']} of {e['n']}."
                      + (f" The measured saving's own spread: the random ticket (the same size in every seed, no "
                         f"search) varies by a standard deviation of {summ['random_time_saved_std_within_task']:.1%} "
                         "within a task (pooled), since full and the method run in separate processes."
                         if "random_time_saved_std_within_task" in summ else ""), ""]
    if variants:
        mean = lambda xs: f"{statistics.fmean(xs):+.2f}" if xs else "-"  # noqa: E731
        lines += ["## Diagnostic variants (--variants)", "",
                  "| task | variant | seeds | score | minus full (same seeds) | time saved vs full |", "|---|---|---|---|---|---|",
                  *(f"| {t} | {name} | {len(v['seeds'])} | {statistics.fmean(v['score']):.2f} | {mean(v['minus_full'])} | "
                    + (f"{statistics.fmean(v['time_saved']):.1%}" if v["time_saved"] else "-") + " |"
                    for t, by in variants.items() for name, v in by.items()), "",
                  "full-short: the full model trained with EarlyBERT's protocol (2 epochs at 2x lr); full-lr2x: 3 epochs at 2x; earlybert-long: "
                  "the slim model trained 3 epochs; earlybert-lr1x / -lr3x / -lr4x: the slim model at 1x / 3x / 4x full's "
                  "learning rate (random-lr3x / -lr4x: the random ticket of the same shape at that rate); "
                  "earlybert-heads / -ffn: only heads / only FFN neurons pruned.", ""]
        ci = lambda x: (f"{x['mean']:+.2f}" + (f" [{x['ci95'][0]:+.2f}, {x['ci95'][1]:+.2f}]" if x["ci95"] else "")  # noqa: E731
                        + f" (n={x['n']})") if x else "-"
        if pairs:
            lines += ["Over every (task, seed) pair a variant ran (paired differences, mean [95% CI]):", "",
                      "| variant | tasks | minus full | minus its random ticket | time saved | time saved, same sitting |",
                      "|---|---|---|---|---|---|",
                      *(f"| {p['variant']} | {p['tasks']} | {ci(p['minus_full'])} | {ci(p['minus_random'])} | "
                        f"{p['time_saved']:.1%} | " + (f"{p['time_saved_same_sitting']:.1%}"
                                                        if p["time_saved_same_sitting"] is not None else "-") + " |"
                        for p in pairs), "",
                      "Time saved against the core table's full run of the same task and seed, which may have run in "
                      "another sitting (machine drift, other load), and against `full-lr2x` (full's steps at 2x "
                      "the rate), which runs in the variants' own sitting, where it ran.", ""]
    lines += [
        "Time saved: 1 - (total per-step time of the method) / (total per-step time of full fine-tuning), forward + "
        "backward + optimizer, data loading excluded, EarlyBERT including its search; the first 3 steps of every "
        "stage are counted at the stage's mean step (process warm-up). "
        + (f"The methods of one task and seed take turns, {args.slice} steps of the longest at a time (the others in "
           "proportion), so that all run through the same stretch of the machine's time."
           if args.slice else "The methods of one task and seed run back to back."), "",
    ]
    atomic_write_text(output.with_suffix(".md"), "\n".join(lines))


def _machines_line(groups: dict[str, dict]) -> list[str]:
    """Where the groups ran on more than one machine: which groups ran where (times are compared within a group)."""
    where: dict[str, list[str]] = {}
    for key, m in groups.items():
        where.setdefault(f"{m.get('cpu', m.get('gpu', '?'))}, {m.get('threads', '?')} threads, "
                         f"{m.get('mixed_precision', '?')}", []).append(key)
    if len(where) < 2:
        return []
    return [f"Groups by machine (time saved is a ratio within a group): "
            + "; ".join(f"{m}: {', '.join(keys)}" for m, keys in where.items()) + "  "]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--data", default=str(DATA),
                        help="GLUE folder (SST-2/, CoLA/, ...; QNLI needs dev.tsv only) or a .tar.xz of one")
    parser.add_argument("--model", default=None, help="model folder (default: the MiniLM-L6 package's)")
    parser.add_argument("--train-samples", default=TRAIN_SAMPLES, help="TASK=N caps, or all")
    parser.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints (0: none)")
    parser.add_argument("--slice", type=int, default=SLICE_STEPS,
                        help="steps each method of a (task, seed) runs before the next takes over (0: back to back)")
    parser.add_argument("--variants", default="", help=f"diagnostic variants after the core methods: {', '.join(VARIANTS)}")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="start no (task, seed) group that the time left cannot hold (estimated from the "
                             "groups done in this sitting)")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--layerdrop-seeds", default="1", help="seeds that also run LayerDrop, after all others")
    parser.add_argument("--lr", type=float, default=2e-5,
                        help="full fine-tuning's learning rate (EarlyBERT and the random ticket train at 2x): the "
                             "paper's 2e-5 by default; MiniLM learns more at 4e-5 (see the full-lr2x variant)")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--pad-to-multiple-of", type=int, default=None,
                        help="pad batches to a multiple of N tokens instead of their longest (earlybert's option)")
    parser.add_argument("--mixed-precision", choices=["auto", "no", "bf16"], default="auto")
    parser.add_argument("--redo", default=None, help="TASK:SEED[,...]: take these groups out of the table, so that "
                        "the next run measures them again, and stop (see redo())")
    parser.add_argument("--redo-reason", default=None,
                        help="why --redo's groups are measured again (kept in the table)")
    parser.add_argument("--runs", default=str(HERE / "runs" / "finetune_glue"))
    parser.add_argument("--output", default=str(HERE / "results" / "finetune_glue_cpu"))
    args = parser.parse_args()
    if args.slice < 0:
        parser.error(f"--slice must be >= 0, got {args.slice}")
    logging.basicConfig(level=logging.WARNING)
    mixed = args.mixed_precision if args.mixed_precision != "auto" else mixed_precision()
    caps = parse_samples(args.train_samples)
    model = args.model or minilm_path()
    started = time.time()
    groups = restore(args)
    runs_dir = Path(args.runs)
    if args.redo:
        for d in redo(args):
            groups.pop(group_key(d["task"], d["seed"]), None)
            print(f"{d['task']} seed {d['seed']}: {len(d['runs'])} runs taken out of the table; rerun without "
                  "--redo to measure them again", flush=True)
        # the report as the table now stands, under the command that continues it
        write_results(args, collect(runs_dir), started, mixed, [], groups, command="python " + " ".join(
            without_redo(sys.argv)))
        return
    data_root = unpacked(Path(args.data), runs_dir / "data")
    qnli_root = qnli_split(runs_dir / "data", data_root)
    variants = [v for v in args.variants.split(",") if v]
    if any(v not in VARIANTS for v in variants):
        raise SystemExit(f"finetune_glue.py: error: --variants takes {', '.join(VARIANTS)}; got {args.variants!r}")
    passes = [(int(s), CORE) for s in args.seeds.split(",")]
    passes += [(int(s), ["layerdrop"]) for s in args.layerdrop_seeds.split(",") if s]
    notes: list[str] = []
    spent_s = spent_units = 0.0  # wall time per unit of work (a training example-epoch) over this sitting's groups
    for seed, methods in passes:
        for task in args.tasks.split(","):
            data = qnli_root if task == "qnli" else data_root
            extra = variants if methods == CORE else []
            units = group_units(data / FOLDERS[task], caps.get(task), methods, extra)
            if args.budget_s is not None and spent_units:
                need, left = 1.15 * units * spent_s / spent_units, args.budget_s - (time.time() - started)
                if need > left:
                    notes.append(f"{task} seed {seed} ({', '.join(methods)}) not started: it needs ~{need:.0f} s, "
                                 f"{left:.0f} s of the budget were left")
                    print(notes[-1], flush=True)
                    continue
            base = FinetuneConfig(model=model, task=task, data=str(data), output=str(runs_dir / task),
                                  max_train_samples=caps.get(task), max_length=args.max_length, lr=args.lr,
                                  checkpoint_every=args.checkpoint_every, mixed_precision=mixed,
                                  pad_to_multiple_of=args.pad_to_multiple_of)
            print(f"== {task} seed {seed}: {', '.join(methods)}", flush=True)
            t0 = time.time()
            ran_before = all((runs_dir / task / f"{m}-seed{seed}" / "results.json").exists() for m in methods) and all(
                (runs_dir / "variants" / task / v / f"{VARIANTS[v][0]}-seed{seed}" / "results.json").exists()
                for v in extra)
            try:
                done = compare(replace(base), methods, [seed], resume=True, slice_steps=args.slice)
                for name in extra:
                    method, overrides = VARIANTS[name]
                    if "lr_times" in overrides:
                        overrides = {**overrides, "lr": args.lr * overrides["lr_times"]}
                        del overrides["lr_times"]
                    like = runs_dir / task / f"earlybert-seed{seed}" / "ticket.json"  # the core table's shape
                    if method == "random" and like.exists():
                        overrides = {**overrides, "ticket_like": str(like)}
                    compare(replace(base, output=str(runs_dir / "variants" / task / name), **overrides), [method],
                            [seed], resume=True)
            except Exception as e:  # one group's failure must not cost the others their (rare, GPU) run
                logger.exception("%s seed %d failed", task, seed)
                notes.append(f"{task} seed {seed} failed: {type(e).__name__}: {e}")
                done = []
            if done and not ran_before:
                spent_s, spent_units = spent_s + time.time() - t0, spent_units + units
                groups[group_key(task, seed)] = machine_info(mixed)
            write_results(args, collect(runs_dir), started, mixed, notes, groups)
    write_results(args, collect(runs_dir), started, mixed, notes, groups)
    print(Path(args.output).with_suffix(".md").read_text())


def unpacked(data: Path, into: Path) -> Path:
    """The GLUE folder itself, or the folder a .tar.xz of it (bench/gpu.py --prepare's glue.tar.xz) unpacks to."""
    if not data.name.endswith(".tar.xz"):
        return data
    import tarfile

    target = into / "glue"
    if not target.is_dir():
        with tarfile.open(data) as tar:
            tar.extractall(target, filter="data")
    return target


def group_units(folder: Path, cap: int | None, methods: list[str], variants: list[str] = ()) -> float:
    """A group's work in training example-epochs (full 3, EarlyBERT 0.2 + 2, random 2, LayerDrop 3), to scale the
    time the groups so far took to the next one."""
    with open(folder / "train.tsv", encoding="utf-8") as f:
        n = sum(1 for _ in f) - 1
    n = min(n, cap) if cap else n
    epochs = {"full": 3, "earlybert": 2.2, "random": 2, "layerdrop": 3}
    return math.ceil(n / 32) * 32 * (sum(epochs[m] for m in methods) + sum(VARIANT_EPOCHS[v] for v in variants))


if __name__ == "__main__":
    main()
