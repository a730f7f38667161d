"""Pre-training past the unigram plateau: full, EarlyBERT and a random ticket of EarlyBERT's shape (Table 4, CPU).

A 2-layer encoder of BERT-Mini's width with 8 heads (bert-l2-h256-a8: hidden 256, FFN 1024) is pre-trained from
one random init theta_0 three ways on all of ../shared/data/text, with an 8k WordPiece vocabulary trained on that
text (most of a small model's step would otherwise go to a 30k vocabulary), 128 sequences of 32 tokens a step in
phase 1: full for --steps steps; EarlyBERT, its search from theta_0 and then its slim model for 80% of them; a
random ticket of EarlyBERT's per-layer shape for the same 80%, with no search.
Then each checkpoint is fine-tuned in full (`earlybert finetune --method full`) on SST-2 (10k training
sentences), STS-B and MRPC at --finetune-lr, 3 seeds each; and so is theta_0 itself (no pre-training), since a
small encoder fine-tuned from scratch can score as well as a pre-trained one: BERT-Tiny's theta_0 reached 77.4% on
SST-2 at lr 1e-4, its checkpoint past the context-free floor 76.5%; at 3e-5, 50.9% (the majority class) and 67.3%.

    python bench/pretrain.py                                     # the benchmark (hours: see bench/README.md)
    python bench/pretrain.py --smoke --runs /tmp/pretrain-smoke  # end to end in about a minute on one core

The three runs are interleaved, --slice steps at a time (each pauses at a checkpoint and resumes), so a drift in
the shared machine's speed falls on all alike. At every pause the held-out MLM loss on a fixed slice of the
held-out text is recorded against the step time spent so far: the figure shows all three on one time axis,
EarlyBERT's search included (and its reset to theta_0 after it). Everything resumes: rerunning the command
continues where it stopped and reuses finished runs.

Held-out text: the last 1% of the token stream. The text files are read in an order that puts
enwiki_sample/valid.txt last, so it is the end of that file: Wikipedia articles not trained on (the vocabulary was
trained on all of the text). The unigram plateau is the entropy of the unigram distribution of the held-out
tokens at length 128 (from their counts, special tokens aside). A model that also copies the 10% of targets
left visible gets lower, to the context-free floor (`earlybert.pretrain.context_free_loss`, 6.44 nats against a
unigram entropy of 7.08 here): only a loss below that floor shows that attention carries information.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
from collections import Counter
from pathlib import Path

import torch

from earlybert.data import TASKS, load_glue
from earlybert.finetune import FinetuneConfig, finetune
from earlybert.pretrain import (METHODS, PretrainConfig, compare_pretraining, context_free_loss, initial_model,
                                prepare, run_tokenizer, unigram_entropy)
from earlybert.runs import atomic_write_text, write_folder
from machine import cpu_name

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("EARLYBERT_DATA", HERE.parents[1] / "shared" / "data"))
# enwiki_sample/valid.txt last: the held-out tail of the token stream is then unseen Wikipedia text
TEXT = ("brown/train.txt", "brown/valid.txt", "nlp_corpus/sentences.txt", "enwiki_sample/train.txt",
        "enwiki_sample/valid.txt")
DEFAULT_FINETUNE_LR = 1e-4  # the paper's 2e-5 leaves a small encoder trained from scratch at the majority class

# Each setting's default, defined once; --smoke replaces some with toy sizes that run end to end in about a minute.
DEFAULTS = dict(
    runs=HERE / "runs" / "pretrain", text=",".join(TEXT), config="bert-l2-h256-a8",
    # Length 32 in phase 1 at 128 sequences a step: BERT-Tiny left the context-free floor after ~3,700 steps so,
    # and at no setting tried at length 128 (bench/README.md, "pre-training regimes"). 4,000 steps: this encoder's
    # full run is 1.5 nats under the floor by the end of phase 1 (pretrain_regime.py, the table there), in half the
    # time of the former 8,000 (which took more than one sitting, and a sitting may not find the last one's runs)
    tokenizer="wordpiece:8000", steps=4000, slice=100, seq_len="32,512", batch_size="128,8",
    # LAMB's trust ratio sets each weight matrix's step to lr x the matrix's norm: about lr x 0.02 per weight at
    # BERT's init, where small-batch Adam at 1e-3 moves each weight some 1e-4 to 1e-3. At the 2e-3 of the last
    # benchmark the matrices barely moved while the biases and LayerNorm (plain Adam steps at the same rate) fitted
    # the unigram distribution: the plateau. 1e-2 moves the matrices like Adam at about 1e-3 for this batch and
    # keeps the plain Adam steps sane. Measured against it (full model, same schedule, one core): `--optimizer adamw
    # --lr 1e-3,7e-4` reached held-out MLM loss 6.96 / 6.86 / 6.80 at steps 300 / 400 / 500, LAMB at 1e-2 6.87 /
    # 6.76 / 6.79: no faster, so LAMB, the paper's optimizer, stays.
    lr="1e-2,7e-3", warmup_ratio="0.1,0.1", optimizer="lamb", search_steps=None, curve_sequences=256,
    tasks="sst2,stsb,mrpc", seeds="1,2,3", max_train_samples=10000, max_eval_samples=None,
    finetune_lr=DEFAULT_FINETUNE_LR, finetune_epochs=3.0,
)
SMOKE = dict(runs=HERE / "runs" / "pretrain-smoke", text="enwiki_sample/valid.txt", config="tiny",
             tokenizer="wordpiece:1000", steps=30, slice=15, seq_len="32,64", batch_size="8,4", search_steps=4,
             curve_sequences=16,
             seeds="1", max_train_samples=200, max_eval_samples=100, finetune_epochs=1.0)
# --config tiny: a toy encoder for the smoke run (its vocabulary holds wordpiece:1000)
TINY = dict(model_type="bert", vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=128, max_position_embeddings=128)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="toy sizes, end to end in about a minute on one core")
    p.add_argument("--data", type=Path, default=SHARED, help="shared data folder with text/ and glue/ (%(default)s)")
    p.add_argument("--runs", type=Path, help="runs and caches (bench/runs/pretrain; smoke: bench/runs/pretrain-smoke)")
    p.add_argument("--results", type=Path, help="where pretrain_cpu.{json,md} go (bench/results; smoke: RUNS, so "
                   "that a smoke run never overwrites the committed results)")
    p.add_argument("--text", help="comma-separated text files under DATA/text, the held-out one last")
    p.add_argument("--config", help=f"pre-training config: a preset, a config.json, or tiny ({DEFAULTS['config']}; "
                   "smoke: tiny)")
    p.add_argument("--tokenizer", help="wordpiece:N (trained on the text, cached) or a tokenizer folder")
    p.add_argument("--steps", type=int, help="the full run's optimizer steps over both phases")
    p.add_argument("--slice", type=int, help="steps each method runs before the next one takes over")
    p.add_argument("--seq-len", help="sequence length per phase")
    p.add_argument("--batch-size", help="batch per phase")
    p.add_argument("--lr", help="peak learning rate per phase")
    p.add_argument("--warmup-ratio", help="warm-up share of each phase's steps")
    p.add_argument("--optimizer", choices=["lamb", "adamw"])
    p.add_argument("--search-steps", type=int, help="EarlyBERT's search budget (default: 400 x steps / 8601)")
    p.add_argument("--curve-sequences", type=int, help="held-out sequences evaluated at every pause")
    p.add_argument("--tasks", help="GLUE tasks for the downstream fine-tuning")
    p.add_argument("--seeds", help="fine-tuning seeds")
    p.add_argument("--max-train-samples", type=int, help="training examples per task (SST-2 has 67k)")
    p.add_argument("--max-eval-samples", type=int, help="dev examples per task (default: all)")
    p.add_argument("--finetune-lr", type=float, help="downstream fine-tuning learning rate; a value other than "
                   f"{DEFAULT_FINETUNE_LR:g} writes results named after it, beside the default ones")
    p.add_argument("--finetune-epochs", type=float, help="downstream fine-tuning epochs")
    args = p.parse_args(argv)
    for name, value in {**DEFAULTS, **(SMOKE if args.smoke else {})}.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.results is None:
        args.results = args.runs if args.smoke else HERE / "results"
    unknown = [t for t in args.tasks.split(",") if t not in TASKS or t == "squad"]
    if unknown:
        p.error(f"--tasks: unknown GLUE task(s) {', '.join(unknown)}")
    for name in ("steps", "slice", "curve_sequences", "max_train_samples"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not (args.data / "text").is_dir() or not (args.data / "glue").is_dir():
        p.error(f"--data: {args.data} has no text/ and glue/ folders (set EARLYBERT_DATA or pass --data)")
    return args


def pair(text: str, kind) -> tuple:
    return tuple(kind(x) for x in text.split(","))


def base_config(args) -> PretrainConfig:
    """The settings all three runs share; compare_pretraining sets each one's method and folder."""
    config = args.config
    if config == "tiny":
        config = args.runs / "tiny-config.json"
        config.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(config, json.dumps(TINY))
    return PretrainConfig(
        config=str(config), tokenizer=args.tokenizer,
        text=tuple(str(args.data / "text" / name) for name in args.text.split(",")),
        output=str(args.runs / "pretrain"), method="full", steps=args.steps, seq_len=pair(args.seq_len, int),
        batch_size=pair(args.batch_size, int), lr=pair(args.lr, float), warmup_ratio=pair(args.warmup_ratio, float),
        search_steps=args.search_steps, optimizer=args.optimizer, checkpoint_every=100,
        cache_dir=str(args.runs / "cache"))


def pretrain_all(args, base: PretrainConfig) -> dict[str, dict]:
    """The three runs, interleaved slice by slice until all have finished (a rerun resumes them)."""
    while True:
        results = compare_pretraining(base, resume=True, stop_after=args.slice, curve_sequences=args.curve_sequences)
        if all(r is not None for r in results.values()):
            return results


def unigram_plateau(base: PretrainConfig) -> dict:
    tokenizer, _, phases = prepare(base, run_tokenizer(Path(base.output) / "full"))  # the runs' own tokenizer
    held = phases[0][1]
    return {"entropy_nats": unigram_entropy(held, tokenizer.all_special_ids),
            "context_free_nats": context_free_loss(held, tokenizer.all_special_ids, len(tokenizer)),
            "held_out_sequences": len(held),
            "sequence_length": base.seq_len[0],
            "what": "entropy of the unigram distribution of the held-out tokens (counts, special tokens aside): "
                    "the lowest held-out MLM loss of a model that predicts a masked token without any input (one that "
                    "also copies the visible targets reaches context_free_nats)"}


NO_PRETRAINING = "theta0"  # the downstream row of the encoder at theta_0, before any pre-training


def theta0_checkpoint(args, base: PretrainConfig) -> Path:
    """theta_0 saved as a model folder beside the pre-trained ones (the full run's copy: all three start there)."""
    folder = args.runs / "pretrain" / NO_PRETRAINING
    if not folder.exists():
        full = args.runs / "pretrain" / "full"
        tokenizer, model_config, _ = prepare(base, run_tokenizer(full))

        def write(partial: Path) -> None:
            initial_model(model_config, full).save_pretrained(partial)
            tokenizer.save_pretrained(partial)

        write_folder(folder, write)
    return folder


def finetune_all(args, pre: dict[str, dict], theta0: Path) -> dict[str, dict[str, list[float]]]:
    """Full fine-tuning of each pre-trained checkpoint, and of theta_0, on each task with each seed:
    scores[method][task] (method NO_PRETRAINING for theta_0)."""
    suffix = "" if args.finetune_lr == DEFAULT_FINETUNE_LR else f"-lr{args.finetune_lr:g}"
    scores = {}
    for method in [*pre, NO_PRETRAINING]:
        model = theta0 if method == NO_PRETRAINING else args.runs / "pretrain" / method / "model"
        scores[method] = {}
        for task in args.tasks.split(","):
            scores[method][task] = []
            for seed in pair(args.seeds, int):
                run = args.runs / "finetune" / f"{method}-{task}-seed{seed}{suffix}"
                config = FinetuneConfig(model=str(model), task=task, data=str(args.data / "glue"), output=str(run),
                                        method="full", max_train_samples=args.max_train_samples,
                                        max_eval_samples=args.max_eval_samples, lr=args.finetune_lr,
                                        epochs=args.finetune_epochs, seed=seed)
                scores[method][task].append(finetune(config, resume=run.exists())["score"])
    return scores


def floor(task: str, glue: Path) -> float:
    """What a model that learned nothing scores: the dev set's majority-class accuracy; 0 correlation (STS-B)."""
    spec = TASKS[task]
    if spec.is_regression:
        return 0.0
    dev = next(iter(load_glue(spec, glue).evals.values()))
    return 100 * Counter(e.label for e in dev).most_common(1)[0][1] / len(dev)


def summarize(args, base: PretrainConfig, pre: dict, scores: dict, plateau: dict) -> dict:
    """pretrain_cpu.json: time saved, held-out loss against the plateau, the search, downstream scores."""
    tasks = args.tasks.split(",")
    results = {}
    for method, r in pre.items():
        results[method] = {k: v for k, v in r.items() if k != "losses"}  # per-step losses stay in the run folders
        for task in tasks:
            results[method][f"downstream_{task}"] = statistics.fmean(scores[method][task])
            results[method][f"downstream_{task}_seeds"] = scores[method][task]
    mean = {m: statistics.fmean(results[m][f"downstream_{t}"] for t in tasks) for m in results}
    theta0 = {t: statistics.fmean(scores[NO_PRETRAINING][t]) for t in tasks}
    no_pretraining = {"downstream_mean": statistics.fmean(theta0.values()),
                      **{f"downstream_{t}": theta0[t] for t in tasks},
                      **{f"downstream_{t}_seeds": scores[NO_PRETRAINING][t] for t in tasks},
                      "what": "theta_0, where all three runs start, fine-tuned the same way: the part of a "
                              "checkpoint's score that fine-tuning alone earns"}
    full_s = pre["full"]["total_step_time_s"]
    search = pre["earlybert"]["stages"]["search"]
    return {
        "command": "python " + " ".join(sys.argv), "machine": {"cpu": cpu_name(), "threads": torch.get_num_threads(),
                                                               "torch": torch.__version__},
        "time_saved": 1 - pre["earlybert"]["total_step_time_s"] / full_s,
        "time_saved_random": 1 - pre["random"]["total_step_time_s"] / full_s,
        "phase1_median_step_ratio_slim_over_full":
            pre["earlybert"]["stages"]["phase1"]["median_step_s"] / pre["full"]["stages"]["phase1"]["median_step_s"],
        "unigram_plateau": plateau,
        "held_out_mlm_loss": {m: r["held_out"][f"length_{plateau['sequence_length']}"]["mlm_loss"]
                              for m, r in pre.items()},
        "search": {"steps": search["steps"], "budget": search["budget"], "stop_reason": search["stop_reason"],
                   "phase1_warmup_steps": int(base.warmup_ratio[0] * base.phase_steps[0]),
                   "ticket": pre["earlybert"]["layer_shapes"]},
        "downstream_mean": mean,
        "earlybert_minus_full": mean["earlybert"] - mean["full"],
        "earlybert_minus_random": mean["earlybert"] - mean["random"],
        "no_pretraining": no_pretraining,
        "full_minus_no_pretraining": mean["full"] - no_pretraining["downstream_mean"],
        "majority_class": {t: floor(t, args.data / "glue") for t in tasks},
        "finetune": {"lr": args.finetune_lr, "epochs": args.finetune_epochs, "seeds": list(pair(args.seeds, int)),
                     "max_train_samples": args.max_train_samples, "max_eval_samples": args.max_eval_samples,
                     "batch_size": FinetuneConfig.batch_size},
        "results": results,
    }


def loss_plot(summary: dict, path: Path) -> None:
    """Held-out MLM loss against cumulative step time, all three methods, with the unigram plateau."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for method, r in summary["results"].items():
        curve = r["held_out_curve"]
        ax.plot([p["step_time_s"] / 60 for p in curve], [p["mlm_loss"] for p in curve], marker=".", lw=1, label=method)
    plateau = summary["unigram_plateau"]["entropy_nats"]
    ax.axhline(plateau, color="gray", ls="--", lw=0.8, label=f"unigram plateau ({plateau:.2f})")
    floor_ = summary["unigram_plateau"]["context_free_nats"]
    ax.axhline(floor_, color="gray", ls=":", lw=0.8, label=f"context-free floor ({floor_:.2f})")
    ax.set_xlabel("cumulative step time (min), EarlyBERT's search included")
    ax.set_ylabel("held-out MLM loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(summary: dict, args, figure: str) -> str:
    tasks, seq_len = args.tasks.split(","), pair(args.seq_len, int)
    results, m, plateau = summary["results"], summary["machine"], summary["unigram_plateau"]
    lines = ["# Pre-training: full vs EarlyBERT vs a random ticket of EarlyBERT's shape (CPU)", "",
             f"Command: `{summary['command']}`  ",
             f"Machine: {m['cpu']}, {m['threads']} threads, torch {m['torch']}, fp32  ",
             f"Model: {args.config}, tokenizer {args.tokenizer} trained on the text; text: {args.text} under "
             f"{args.data / 'text'} (held-out: the last 1% of tokens); {args.optimizer}, peak lr {args.lr}, warm-up "
             f"{args.warmup_ratio}, batch {args.batch_size} at length {args.seq_len}. The runs were interleaved in "
             f"slices of {args.slice} steps, so all saw the same machine.", "",
             "| method | stage | steps | median step (s) | step time (s) |", "|---|---|---|---|---|"]
    for method, r in results.items():
        for stage, st in r["stages"].items():
            lines.append(f"| {method} | {stage} | {st['steps']} | {st['median_step_s']:.3f} | {st['step_time_s']:.0f} |")
        lines.append(f"| {method} | **total** | {sum(st['steps'] for st in r['stages'].values())} | | "
                     f"**{r['total_step_time_s']:.0f}** |")
    lines += ["", "| method | " + " | ".join(f"held-out MLM loss @{n}" for n in seq_len) + " | "
              + " | ".join(f"{t} (mean of {len(pair(args.seeds, int))} seeds)" for t in tasks) + " | mean |",
              "|---|" + "---|" * (len(seq_len) + len(tasks) + 1)]
    for method, r in results.items():
        losses = " | ".join(f"{r['held_out'][f'length_{n}']['mlm_loss']:.3f}" for n in seq_len)
        scores = " | ".join(f"{r[f'downstream_{t}']:.2f}" for t in tasks)
        lines.append(f"| {method} | {losses} | {scores} | {summary['downstream_mean'][method]:.2f} |")
    theta0 = summary["no_pretraining"]
    lines.append("| no pre-training (theta_0) | " + " | ".join(["-"] * len(seq_len)) + " | "
                 + " | ".join(f"{theta0[f'downstream_{t}']:.2f}" for t in tasks) + f" | {theta0['downstream_mean']:.2f} |")
    floors = summary["majority_class"]
    lines.append(f"| (unigram plateau / majority class) | {plateau['entropy_nats']:.3f} @{seq_len[0]} | "
                 + " | ".join(["-"] * (len(seq_len) - 1) + [f"{floors[t]:.2f}" for t in tasks])
                 + f" | {statistics.fmean(floors.values()):.2f} |")
    search, ft = summary["search"], summary["finetune"]
    lines += ["", f"Unigram plateau: {plateau['entropy_nats']:.3f} nats, the {plateau['what']}. Context-free floor: "
              f"{plateau['context_free_nats']:.3f} nats, the lowest loss of a model that sees only each target's own "
              "input token (BERT's masking leaves 10% of targets unchanged): a loss below it needs the context.",
              f"Downstream: full fine-tuning of each checkpoint, lr {ft['lr']:g}, {ft['epochs']:g} epochs, batch "
              f"{ft['batch_size']}, at most {ft['max_train_samples']} training examples per task, seeds {ft['seeds']}; "
              "dev sets" + (f" (first {ft['max_eval_samples']})" if ft["max_eval_samples"] else "") + ". Floors: the "
              "dev set's majority class, 0 for STS-B's correlation.", "",
              f"Time saved (total step time): EarlyBERT, search included, **{summary['time_saved']:.1%}**; random "
              f"ticket {summary['time_saved_random']:.1%}. Slim / full phase-1 median step: "
              f"{summary['phase1_median_step_ratio_slim_over_full']:.3f}. Downstream mean, EarlyBERT minus full: "
              f"{summary['earlybert_minus_full']:+.2f} points; EarlyBERT minus random ticket: "
              f"{summary['earlybert_minus_random']:+.2f}; full minus no pre-training (theta_0 fine-tuned the same "
              f"way): {summary['full_minus_no_pretraining']:+.2f}, what pre-training earned downstream.",
              f"Search: {search['steps']} of at most {search['budget']} steps ({search['stop_reason']}), "
              f"{'inside' if search['steps'] <= search['phase1_warmup_steps'] else 'past'} phase 1's "
              f"{search['phase1_warmup_steps']}-step warm-up; the ticket (EarlyBERT's, and by construction the random "
              f"ticket's shape): heads per layer {search['ticket']['heads']}, FFN widths {search['ticket']['ffn']}.",
              "", f"![held-out MLM loss against step time]({figure})", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    base = base_config(args)
    pre = pretrain_all(args, base)
    plateau = unigram_plateau(base)
    scores = finetune_all(args, pre, theta0_checkpoint(args, base))
    summary = summarize(args, base, {m: pre[m] for m in METHODS}, scores, plateau)
    suffix = "" if args.finetune_lr == DEFAULT_FINETUNE_LR else f"-lr{args.finetune_lr:g}"
    args.results.mkdir(parents=True, exist_ok=True)
    figure = f"pretrain_loss_cpu{suffix}.png"
    loss_plot(summary, args.results / figure)
    atomic_write_text(args.results / f"pretrain_cpu{suffix}.json", json.dumps(summary, indent=1))
    text = report(summary, args, figure)
    atomic_write_text(args.results / f"pretrain_cpu{suffix}.md", text)
    print(text)


if __name__ == "__main__":
    main()
