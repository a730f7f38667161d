"""Pre-training past the unigram plateau: full, EarlyBERT and a random ticket of EarlyBERT's shape (Table 4, CPU).

A 2-layer encoder of BERT-Mini's width with 8 heads (bert-l2-h256-a8: hidden 256, FFN 1024) is pre-trained from
one random init theta_0 three ways on all of ../shared/data/text, with an 8k WordPiece vocabulary trained on that
text (most of a small model's step would otherwise go to a 30k vocabulary), 128 sequences of 32 tokens a step in
phase 1: full for --steps steps; EarlyBERT, its search from theta_0 and then its slim model for 80% of them; a
random ticket of EarlyBERT's per-layer shape for the same 80%, with no search.
Then each checkpoint is fine-tuned in full (`earlybert finetune --method full`) on SST-2 (10k training
sentences), QNLI (2k pairs of its dev set, as in finetune_glue.py) and STS-B at --finetune-lr, 3 seeds each;
and so is theta_0 itself (no pre-training), since a small encoder fine-tuned from scratch can score as well as a
pre-trained one: BERT-Tiny's theta_0 reached 77.4% on SST-2 at lr 1e-4, its checkpoint past the context-free
floor 76.5%; at 3e-5, 50.9% (the majority class) and 67.3%.

    python bench/pretrain.py                                     # the benchmark (hours: see bench/README.md)
    python bench/pretrain.py --smoke --runs /tmp/pretrain-smoke  # end to end in about a minute on one core

On two or more cores (--cores; default: every core this process may use) the runs train side by side, one
process per core with one thread: full on one core, EarlyBERT and then the random ticket (which copies
EarlyBERT's shape) on another; then the 36 fine-tuning runs share the cores the same way: on an Intel Xeon about
1 h 25 min of pre-training and about an hour of fine-tuning on 2 cores (a run takes 2-6.5 min, the full
checkpoint's on SST-2 the longest), where one core would take about 4.5 h. Runs on neighbouring cores slow each other unevenly (a slim step more than
a full one), so the time saved does not come from the runs' own clocks: between pre-training and fine-tuning,
with nothing else running, `calibrate` times a step of every stage (full, search, EarlyBERT's and the random
ticket's slim model, at both phases' shapes) side by side on one core, and a run's time is its steps times those
step times. On one core everything runs in this process instead, the runs taking turns --slice steps at a time,
and is calibrated the same way. The runs' own clocks are reported beside it (`runs_clock`).

Each run pauses every --slice steps; at every pause the held-out MLM loss on a fixed slice of the held-out text
is recorded against the steps spent so far: the figure shows all three on one calibrated time axis, EarlyBERT's
search included (and its reset to theta_0 after it). Everything resumes: rerunning the command continues where it
stopped and reuses finished runs and the calibration (<runs>/calibration.json).

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
import random
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import torch

from earlybert.data import TASKS, load_glue
from earlybert.finetune import FinetuneConfig, finetune
from earlybert.gates import add_gates, penalize
from earlybert.mlm_data import SeededMLMCollator
from earlybert.pretrain import (METHODS, MaskedLM, PretrainConfig, compare_pretraining, context_free_loss,
                                initial_model, prepare, run_tokenizer, unigram_entropy)
from earlybert.prune import prune
from earlybert.runs import atomic_write_text, write_folder
from earlybert.search import EarlyBird, SearchConfig
from earlybert.ticket import Ticket
from earlybert.train import batch_mean_of_medians, timed_step
from finetune_glue import interval, qnli_split
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
    # SST-2, QNLI and STS-B: the tasks the full checkpoint learns at lr 1e-4; MRPC stayed at its majority class
    # (69.1 / 68.4 / 67.6 against 68.4 at 1e-4, 67.6 at 3e-4; bench/README.md)
    tasks="sst2,qnli,stsb", seeds="1,2,3", max_train_samples=10000, max_eval_samples=None,
    finetune_lr=DEFAULT_FINETUNE_LR, finetune_epochs=3.0, cores=None, calibration_reps=10,
)
SMOKE = dict(runs=HERE / "runs" / "pretrain-smoke", text="enwiki_sample/valid.txt", config="tiny",
             tokenizer="wordpiece:1000", steps=30, slice=15, seq_len="32,64", batch_size="8,4", search_steps=4,
             curve_sequences=16,
             seeds="1", max_train_samples=200, max_eval_samples=100, finetune_epochs=1.0, calibration_reps=2)
# --config tiny: a toy encoder for the smoke run (its vocabulary holds wordpiece:1000)
TINY = dict(model_type="bert", vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=128, max_position_embeddings=128)


def usable_cores() -> list[int]:
    """The cores this process may run on; [0] where the OS cannot say or pin (pinning needs Linux)."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]


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
    p.add_argument("--cores", help="comma-separated CPU cores to spread the work over, one thread on each (default: "
                   "every core this process may use). Two or more: full pre-trains on one while EarlyBERT, then the "
                   "random ticket, pre-train on another, and the fine-tuning runs share the cores; the time saved "
                   "then comes from a quiet calibration of every stage's step (module docstring). One: everything "
                   "interleaved in this process, as many threads as torch takes")
    p.add_argument("--calibration-reps", type=int, help="turns of each stage in the calibration (each: one untimed "
                   "step, then CALIBRATION_TURN timed ones)")
    p.add_argument("--lane", help=argparse.SUPPRESS)  # set by the parent for its child processes: "pretrain:full"
    args = p.parse_args(argv)
    for name, value in {**DEFAULTS, **(SMOKE if args.smoke else {})}.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.results is None:
        args.results = args.runs if args.smoke else HERE / "results"
    unknown = [t for t in args.tasks.split(",") if t not in TASKS or t == "squad"]
    if unknown:
        p.error(f"--tasks: unknown GLUE task(s) {', '.join(unknown)}")
    for name in ("steps", "slice", "curve_sequences", "max_train_samples", "calibration_reps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not (args.data / "text").is_dir() or not (args.data / "glue").is_dir():
        p.error(f"--data: {args.data} has no text/ and glue/ folders (set EARLYBERT_DATA or pass --data)")
    usable = usable_cores()
    try:
        args.cores = usable if args.cores is None else [int(c) for c in args.cores.split(",")]
    except ValueError:
        p.error(f"--cores: expected comma-separated core numbers, got {args.cores!r}")
    if not args.cores or set(args.cores) - set(usable):
        p.error(f"--cores: {args.cores} not among the cores this process may use ({usable})")
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


def pretrain_all(args, base: PretrainConfig, methods: tuple[str, ...] = METHODS) -> dict[str, dict]:
    """The runs of `methods`, interleaved slice by slice until all have finished (a rerun resumes them; finished
    runs are read back). The random ticket waits for EarlyBERT's ticket: it needs EarlyBERT in its lane."""
    while True:
        results = compare_pretraining(base, resume=True, stop_after=args.slice, curve_sequences=args.curve_sequences,
                                      methods=methods)
        if all(r is not None for r in results.values()):
            return results


def pretrain_lanes(cores: list[int]) -> list[tuple[str, ...]]:
    """The pre-training runs of each process: full alone (the longest run), EarlyBERT and then its random ticket,
    which cannot start before EarlyBERT's search has drawn the shape it copies. One core: all three, interleaved."""
    return [METHODS] if len(cores) < 2 else [("full",), ("earlybert", "random")]


def lanes_that_ran(runs: Path) -> list[tuple[str, ...]]:
    """How the pre-training runs were spread over processes, from the lane logs run_lanes left (none: one
    process): a later invocation on other cores (e.g. the fine-tuning on one core beside other work) reads the runs
    back and must not report its own layout as theirs."""
    logs = sorted((runs / "lanes").glob("pretrain-*.log"))
    return [tuple(log.stem[len("pretrain-"):].split("-")) for log in logs] or [METHODS]


def run_lanes(args, lanes: list[str], argv: list[str]) -> None:
    """Each lane in a child process of this script, pinned to a core of its own with one thread (two threads on
    this encoder's narrow matrices gain little, and collide with a busy neighbour); returns when all have ended.
    Each child's output goes to <runs>/lanes/<lane>.log. A child resumes its runs like any rerun."""
    logs = args.runs / "lanes"
    logs.mkdir(parents=True, exist_ok=True)
    children = []
    try:
        for core, lane in zip(args.cores, lanes):
            log = (logs / f"{lane.replace(':', '-').replace('/', '-of-').replace(',', '-')}.log").open("a")
            command = [sys.executable, str(Path(__file__).resolve()), *argv, "--cores", str(core), "--lane", lane]
            children.append((lane, log, subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                                         env={**os.environ, "OMP_NUM_THREADS": "1"})))
        failed = [lane for lane, _, child in children if child.wait() != 0]
    finally:  # stopped from outside: the children stop too (their runs resume next time)
        for _, log, child in children:
            if child.poll() is None:
                child.terminate()
                child.wait()
            log.close()
    if failed:
        raise SystemExit(f"bench/pretrain.py: lane {', '.join(failed)} failed; its output is in {logs}")


def pin(cores: list[int]) -> None:
    """This process on `cores` with one thread: a lane, or the calibration beside idle cores."""
    os.sched_setaffinity(0, set(cores))
    torch.set_num_threads(1)


# The stages of each run, in order, and the calibration arm that times a step of each: <method>@<phase>
STAGE_ARMS = {"full": (("phase1", "full@1"), ("phase2", "full@2")),
              "earlybert": (("search", "search@1"), ("phase1", "earlybert@1"), ("phase2", "earlybert@2")),
              "random": (("phase1", "random@1"), ("phase2", "random@2"))}
CALIBRATION_BATCHES = 3
# Steps an arm takes in a row in each of its calibration turns, after one untimed step: a run's steps follow one
# another on the same weights, where arms alternating step by step (7 models with their optimizer states, tens of
# MB in all) would each start cold.
CALIBRATION_TURN = 3


def calibrate(args, base: PretrainConfig) -> dict:
    """The step time of every stage of the three runs, measured side by side in one process on one core.

    Runs that train at the same time on neighbouring cores slow each other, and not alike: on an Intel Xeon with
    another benchmark on the other core, the slim phase-1 step took 0.53 s instead of 0.41 and the full one 0.71 s
    either way (bench/README.md). So the runs' own clocks measure their neighbours as much as their tickets, and
    the time saved comes from here instead: the models of every stage (theta_0 full, gated for the search, pruned
    to EarlyBERT's and to the random ticket) train on the runs' own batches with the runs' own optimizers, the arms
    taking turns in a new seeded random order every turn, `--calibration-reps` turns each of CALIBRATION_TURN
    timed steps in a row after one untimed one, after one untimed step per batch; each arm's step time is the mean
    over its batches of each batch's median (earlybert.train.batch_mean_of_medians).
    A run's time is then sum over its stages of steps x that stage's step time: the paper's protocol (time per
    step, data I/O excluded, the search included). Written once to <runs>/calibration.json and read back after."""
    path = args.runs / "calibration.json"
    if path.exists():
        return json.loads(path.read_text())
    root = Path(base.output)
    tokenizer, model_config, phases = prepare(base, run_tokenizer(root / "full"))
    collator = SeededMLMCollator(tokenizer, base.seed)

    def model_of(method: str):
        model = initial_model(model_config, root / "full")  # the values do not matter to a step's time
        if method != "full":
            prune(model, Ticket.load(root / method / "ticket.json"))
        return model

    arms, batches = {}, []
    for phase in (0, 1):
        train, size = phases[phase][0], base.batch_size[phase]
        batches.append([collator([train[i] for i in range(b * size, (b + 1) * size)])
                        for b in range(max(1, min(CALIBRATION_BATCHES, len(train) // size)))])
        for method in METHODS:
            wrapper = MaskedLM(model_of(method))
            arms[f"{method}@{phase + 1}"] = (wrapper, base.optimizer_fn(phase)(wrapper), None, phase)
    model = model_of("full")
    gates = add_gates(model)  # the search's step: gates, the L1 penalty in the optimizer step, the early-bird record
    wrapper = MaskedLM(model)
    optimizer = penalize(base.optimizer_fn(0, base.gates.learning_rate(base.lr[0]))(wrapper), gates, base.gates)
    tracker = EarlyBird(base.ticket, SearchConfig(epsilon=base.epsilon, patience=base.patience, window=base.window,
                                                  max_steps=base.search_budget))  # its window: the search's
    arms["search@1"] = (wrapper, optimizer, (tracker, gates), 0)
    max_norm = base.phase_config(0, 1).max_grad_norm
    counts = dict.fromkeys(arms, 0)

    def step(arm: str, batch: dict) -> float:
        wrapper, optimizer, search, _ = arms[arm]
        seconds = timed_step(wrapper, optimizer, batch, max_norm)  # as train_stage steps
        counts[arm] += 1
        if search is not None:  # the search's bookkeeping is part of its step
            begin = time.perf_counter()
            search[0].record(counts[arm], search[1])
            seconds += time.perf_counter() - begin
        return seconds

    for arm, (wrapper, _, _, phase) in arms.items():
        wrapper.train()
        for batch in batches[phase]:
            step(arm, batch)
    names = list(arms)
    times = {arm: [[] for _ in batches[arms[arm][3]]] for arm in names}
    order = random.Random(0)
    for turn in range(args.calibration_reps):
        # A new order every turn. A rotation kept each arm behind the same one: in the 4,000-step benchmark's first
        # calibration (Intel Xeon) the random ticket's phase-1 model, always behind EarlyBERT's of the same shape,
        # timed 17% faster than it (0.49 s against 0.59), while at phase 2 the two agreed. The fixed order is the
        # one systematic difference between them that we know of.
        for arm in order.sample(names, len(names)):
            phase_batches = batches[arms[arm][3]]
            for i in range(CALIBRATION_TURN + 1):
                b = (turn * CALIBRATION_TURN + i) % len(phase_batches)
                seconds = step(arm, phase_batches[b])
                if i:  # the turn's first step pays for the caches the other arms' weights and states evicted
                    times[arm][b].append(seconds)
    step_s = {arm: batch_mean_of_medians(t) for arm, t in times.items()}
    result = {"step_s": step_s,
              # EarlyBERT's ticket and the random one have the same shape, layer by layer, so the same step cost:
              # how far apart the calibration puts them is its own error
              "same_shape_ratio": {f"phase{p}": step_s[f"random@{p}"] / step_s[f"earlybert@{p}"] for p in (1, 2)},
              "samples": times, "turns": args.calibration_reps, "timed_steps_per_turn": CALIBRATION_TURN,
              "batches": [len(b) for b in batches],
              "machine": {"cpu": cpu_name(), "threads": torch.get_num_threads(),
                          "cores": usable_cores()},
              "what": "per-step time of each stage (arm <method>@<phase>; search@1: the gated full model with its "
                      "penalty and early-bird record), measured side by side in one process, nothing else running"}
    atomic_write_text(path, json.dumps(result, indent=1))
    return result


def calibrated_seconds(result: dict, calibration: dict, steps: float | None = None) -> float:
    """A run's step time at the calibration's per-step times: its first `steps` steps (all by default), stage by
    stage in the order it ran them."""
    total, left = 0.0, float("inf") if steps is None else steps
    for stage, arm in STAGE_ARMS[result["method"]]:
        n = min(result["stages"][stage]["steps"], left)
        total, left = total + n * calibration["step_s"][arm], left - n
    return total


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


def finetune_all(args, theta0: Path, lane: tuple[int, int] = (0, 1)) -> dict[str, dict[str, list[float]]]:
    """Full fine-tuning of each pre-trained checkpoint, and of theta_0, on each task with each seed:
    scores[method][task] (method NO_PRETRAINING for theta_0). lane (i, n): only every n-th run from the i-th, for
    one of n processes; the parent's own call then reads every finished run back."""
    suffix = "" if args.finetune_lr == DEFAULT_FINETUNE_LR else f"-lr{args.finetune_lr:g}"
    runs = [(method, task, seed) for method in (*METHODS, NO_PRETRAINING) for task in args.tasks.split(",")
            for seed in pair(args.seeds, int)]
    scores = {}
    for method, task, seed in runs[lane[0]::lane[1]]:
        model = theta0 if method == NO_PRETRAINING else args.runs / "pretrain" / method / "model"
        run = args.runs / "finetune" / f"{method}-{task}-seed{seed}{suffix}"
        config = FinetuneConfig(model=str(model), task=task, data=str(glue_root(args, task)), output=str(run),
                                method="full", max_train_samples=args.max_train_samples,
                                max_eval_samples=args.max_eval_samples, lr=args.finetune_lr,
                                epochs=args.finetune_epochs, seed=seed)
        scores.setdefault(method, {}).setdefault(task, []).append(finetune(config, resume=run.exists())["score"])
    return scores


def glue_root(args, task: str) -> Path:
    """The GLUE folder a task reads: QNLI's training pairs are a fixed split of its dev set, as in
    finetune_glue.py (../shared/data has no QNLI training file)."""
    return qnli_split(args.runs / "data", args.data / "glue") if task == "qnli" else args.data / "glue"


def floor(task: str, glue: Path) -> float:
    """What a model that learned nothing scores: the dev set's majority-class accuracy; 0 correlation (STS-B)."""
    spec = TASKS[task]
    if spec.is_regression:
        return 0.0
    dev = next(iter(load_glue(spec, glue).evals.values()))
    return 100 * Counter(e.label for e in dev).most_common(1)[0][1] / len(dev)


def summarize(args, base: PretrainConfig, pre: dict, scores: dict, plateau: dict, calibration: dict) -> dict:
    """pretrain_cpu.json: time saved, held-out loss against the plateau, the search, downstream scores."""
    tasks = args.tasks.split(",")
    results = {}
    for method, r in pre.items():
        results[method] = {k: v for k, v in r.items() if k != "losses"}  # per-step losses stay in the run folders
        results[method]["calibrated_step_time_s"] = calibrated_seconds(r, calibration)
        results[method]["held_out_curve"] = [{**point, "calibrated_step_time_s": calibrated_seconds(
            r, calibration, point["steps"])} for point in r["held_out_curve"]]
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
    # Per (task, seed), the two checkpoints fine-tuned with the same seed: the differences the means above average
    def paired(a: dict, b: dict) -> dict:
        return interval([x - y for t in tasks for x, y in zip(a[t], b[t], strict=True)])

    calibrated = {m: results[m]["calibrated_step_time_s"] for m in results}
    own = {m: r["total_step_time_s"] for m, r in pre.items()}
    step_s, search = calibration["step_s"], pre["earlybert"]["stages"]["search"]
    lanes = lanes_that_ran(args.runs)
    return {
        "command": "python " + " ".join(sys.argv),
        "machine": {"cpu": cpu_name(), "threads": 1 if len(lanes) > 1 else torch.get_num_threads(),
                    "torch": torch.__version__, "cores": args.cores},
        "time_saved": 1 - calibrated["earlybert"] / calibrated["full"],
        "time_saved_random": 1 - calibrated["random"] / calibrated["full"],
        "calibration": {k: v for k, v in calibration.items() if k != "samples"},
        "phase1_median_step_ratio_slim_over_full": step_s["earlybert@1"] / step_s["full@1"],
        "search_step_ratio_over_full": step_s["search@1"] / step_s["full@1"],
        "runs_clock": {"lanes": [list(lane) for lane in lanes],
                       "time_saved": 1 - own["earlybert"] / own["full"],
                       "time_saved_random": 1 - own["random"] / own["full"],
                       "phase1_median_step_ratio_slim_over_full": pre["earlybert"]["stages"]["phase1"]["median_step_s"]
                       / pre["full"]["stages"]["phase1"]["median_step_s"],
                       "what": "the runs' own step times, as they trained: in one process taking turns (one lane), "
                               "or in processes side by side on neighbouring cores, which slow each other unevenly"},
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
        "paired": {"earlybert_minus_full": paired(scores["earlybert"], scores["full"]),
                   "earlybert_minus_random": paired(scores["earlybert"], scores["random"]),
                   "full_minus_no_pretraining": paired(scores["full"], scores[NO_PRETRAINING]),
                   "what": "over every (task, seed): the mean of the paired differences and its 95% t-interval"},
        "majority_class": {t: floor(t, glue_root(args, t)) for t in tasks},
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
        ax.plot([p["calibrated_step_time_s"] / 60 for p in curve], [p["mlm_loss"] for p in curve], marker=".", lw=1,
                label=method)
    plateau = summary["unigram_plateau"]["entropy_nats"]
    ax.axhline(plateau, color="gray", ls="--", lw=0.8, label=f"unigram plateau ({plateau:.2f})")
    floor_ = summary["unigram_plateau"]["context_free_nats"]
    ax.axhline(floor_, color="gray", ls=":", lw=0.8, label=f"context-free floor ({floor_:.2f})")
    ax.set_xlabel("cumulative step time (min, calibrated), EarlyBERT's search included")
    ax.set_ylabel("held-out MLM loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def lanes_sentence(summary: dict, args) -> str:
    lanes, c = summary["runs_clock"]["lanes"], summary["calibration"]
    timing = (f"Step times are a calibration ({c['turns']} turns of {c['timed_steps_per_turn']} timed steps per "
              "stage, the stages taking turns, on one core, "
              f"{c['machine']['threads']} thread, between pre-training and fine-tuning, when the benchmark runs "
              "nothing else; `calibrate`): a run's time is its steps times its stages' step times.")
    if len(lanes) == 1:
        return (f"The runs were interleaved in slices of {args.slice} steps in one process. " + timing)
    return (f"The runs trained side by side, one process per core, one thread each: "
            + "; ".join(" then ".join(lane) for lane in lanes) + f" (slices of {args.slice} steps, a held-out point "
            "at each pause), so their own clocks measured their neighbours too. " + timing)


def report(summary: dict, args, figure: str) -> str:
    tasks, seq_len = args.tasks.split(","), pair(args.seq_len, int)
    results, m, plateau = summary["results"], summary["machine"], summary["unigram_plateau"]

    def ci(figure: str) -> str:
        bounds = summary["paired"][figure]["ci95"]
        return f" [{bounds[0]:+.2f}, {bounds[1]:+.2f}]" if bounds else ""

    lines = ["# Pre-training: full vs EarlyBERT vs a random ticket of EarlyBERT's shape (CPU)", "",
             f"Command: `{summary['command']}`  ",
             f"Machine: {m['cpu']}, {m['threads']} threads, torch {m['torch']}, fp32  ",
             f"Model: {args.config}, tokenizer {args.tokenizer} trained on the text; text: {args.text} under "
             f"{args.data / 'text'} (held-out: the last 1% of tokens); {args.optimizer}, peak lr {args.lr}, warm-up "
             f"{args.warmup_ratio}, batch {args.batch_size} at length {args.seq_len}. " + lanes_sentence(summary, args),
             "", "| method | stage | steps | calibrated step (s) | calibrated time (s) | median step in the run (s) "
             "| step time in the run (s) |", "|---|---|---|---|---|---|---|"]
    step_s = summary["calibration"]["step_s"]
    for method, r in results.items():
        for stage, arm in STAGE_ARMS[method]:
            st = r["stages"][stage]
            lines.append(f"| {method} | {stage} | {st['steps']} | {step_s[arm]:.3f} | {st['steps'] * step_s[arm]:.0f} "
                         f"| {st['median_step_s']:.3f} | {st['step_time_s']:.0f} |")
        lines.append(f"| {method} | **total** | {sum(st['steps'] for st in r['stages'].values())} | | "
                     f"**{r['calibrated_step_time_s']:.0f}** | | {r['total_step_time_s']:.0f} |")
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
              "dev sets" + (f" (first {ft['max_eval_samples']})" if ft["max_eval_samples"] else "")
              + (" (QNLI: the pairs of its dev set outside its training split)" if "qnli" in tasks else "")
              + ". Floors: the "
              "dev set's majority class, 0 for STS-B's correlation.", "",
              f"Time saved (calibrated step time): EarlyBERT, search included, **{summary['time_saved']:.1%}**; "
              f"random ticket {summary['time_saved_random']:.1%}. Slim / full phase-1 step: "
              f"{summary['phase1_median_step_ratio_slim_over_full']:.3f}; search / full step: "
              f"{summary['search_step_ratio_over_full']:.3f}. The calibration's own error: the random ticket's "
              "step over EarlyBERT's, the same shapes, "
              + ", ".join(f"{r:.3f} ({p})" for p, r in summary["calibration"]["same_shape_ratio"].items())
              + ". By the runs' own clocks: "
              f"{summary['runs_clock']['time_saved']:.1%} and {summary['runs_clock']['time_saved_random']:.1%} (slim "
              f"/ full phase-1 median {summary['runs_clock']['phase1_median_step_ratio_slim_over_full']:.3f}). "
              "Downstream mean, EarlyBERT minus full: "
              f"{summary['earlybert_minus_full']:+.2f} points{ci('earlybert_minus_full')}; EarlyBERT minus random "
              f"ticket: {summary['earlybert_minus_random']:+.2f}{ci('earlybert_minus_random')}; full minus no "
              f"pre-training (theta_0 fine-tuned the same way): {summary['full_minus_no_pretraining']:+.2f}"
              f"{ci('full_minus_no_pretraining')}, what pre-training earned downstream (95% intervals over the "
              f"{summary['paired']['earlybert_minus_full']['n']} (task, seed) pairs).",
              f"Search: {search['steps']} of at most {search['budget']} steps ({search['stop_reason']}), "
              f"{'inside' if search['steps'] <= search['phase1_warmup_steps'] else 'past'} phase 1's "
              f"{search['phase1_warmup_steps']}-step warm-up; the ticket (EarlyBERT's, and by construction the random "
              f"ticket's shape): heads per layer {search['ticket']['heads']}, FFN widths {search['ticket']['ffn']}.",
              "", f"![held-out MLM loss against step time]({figure})", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    base = base_config(args)
    if args.lane:  # a child process of run_lanes: its share of the runs, then out
        pin(args.cores)
        kind, _, what = args.lane.partition(":")
        if kind == "pretrain":
            pretrain_all(args, base, tuple(what.split(",")))
        else:
            theta0 = args.runs / "pretrain" / NO_PRETRAINING
            finetune_all(args, theta0, tuple(int(x) for x in what.split("/")))
        return
    lanes = pretrain_lanes(args.cores)
    if len(lanes) > 1:
        prepare(base)  # the vocabulary and token cache, once, before processes that would each build their own
        run_lanes(args, [f"pretrain:{','.join(lane)}" for lane in lanes], argv)
    pre = pretrain_all(args, base)  # with lanes: every run finished, read back
    plateau = unigram_plateau(base)
    if len(lanes) > 1:  # one core, one thread, as the lanes ran; the other cores are idle now
        everywhere = usable_cores()
        pin(args.cores[:1])
        calibration = calibrate(args, base)
        os.sched_setaffinity(0, everywhere)
    else:
        calibration = calibrate(args, base)
    theta0 = theta0_checkpoint(args, base)
    if len(args.cores) > 1:
        run_lanes(args, [f"finetune:{i}/{len(args.cores)}" for i in range(len(args.cores))], argv)
    scores = finetune_all(args, theta0)
    summary = summarize(args, base, {m: pre[m] for m in METHODS}, scores, plateau, calibration)
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
