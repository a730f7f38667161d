"""Command line: a thin layer over the functional API.

    earlybert inspect MODEL                                 # family, per-layer shapes, parameters, FLOPs
    earlybert prune MODEL --ticket ticket.json --output DIR # apply a ticket, save a slim model that reloads
    earlybert prune MODEL --random-seed 0 --output DIR      # ... or a default-shaped ticket drawn at random
    earlybert finetune --model M --task sst2 --data DIR --output RUN [--method full|earlybert|random|layerdrop]
    earlybert compare  --model M --task sst2 --data DIR --output DIR --methods full,earlybert --seeds 1,2,3
    earlybert sweep    --model M --task sst2 --data DIR --output DIR --heads 3,4,5,6 --ffn-ratio 0.3,0.4,0.5
    earlybert finetune ... --target-saving 0.4              # the heads and FFN ratio predicted to save 40% of the time
    earlybert ablate stop|epochs|lambda|scope --model M --task sst2 --data DIR --output DIR   # paper Fig. 2-3, Table 3
    earlybert pretrain --config bert-mini --tokenizer wordpiece:16000 --text DIR --output DIR --method compare

MODEL is a local directory or a hub name (hub names need a network).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path

import torch

from . import __version__
from .archs import blocks, get_arch, layer_shapes, max_positions
from .flops import count_flops
from .prune import check_ticket_fits, prune
from .ticket import Ticket, TicketConfig, random_scores_ticket

logger = logging.getLogger("earlybert")


class CliError(Exception):
    """Bad input: reported as one line and exit status 2."""


def is_main_process() -> bool:
    """Rank 0, or no launcher: torchrun and `accelerate launch` set RANK in every process they start. Read from the
    environment because results and log lines must be silenced before any process group exists."""
    return os.environ.get("RANK", "0") == "0"


def say(text: str) -> None:
    """Print a result once per job, not once per process."""
    if is_main_process():
        print(text)


def load_config(name_or_path: str):
    from .tasks import load_model_config

    return load_model_config(name_or_path)


def load_model(name_or_path: str, config=None):
    """The model with the head class its config names (AutoModel when it names none)."""
    from transformers import AutoModel

    config = config or load_config(name_or_path)
    head = (config.architectures or [""])[0]
    return (_auto_class_for(head) or AutoModel).from_pretrained(name_or_path, config=config)


def _auto_class_for(head_class_name: str):
    """BertForMaskedLM / SlimBertForMaskedLM -> AutoModelForMaskedLM; None for base models."""
    from .slim import AUTO_CLASSES

    if "For" not in head_class_name:
        return None
    wanted = "AutoModelFor" + head_class_name.split("For", 1)[1]
    return next((auto for auto in AUTO_CLASSES if auto.__name__ == wanted), None)


def _max_seq_len(model) -> int:
    return max_positions(model.config) or 512  # a model without a position table: any length, 512 as a default


def _example_batch(model, batch_size: int, seq_len: int) -> dict:
    if seq_len > _max_seq_len(model):
        raise CliError(f"sequence length {seq_len} exceeds the model's limit of {_max_seq_len(model)} tokens")
    vocab = model.get_input_embeddings().num_embeddings
    generator = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(0, vocab, (batch_size, seq_len), generator=generator)}


def cmd_inspect(args) -> int:
    model = load_model(args.model)
    arch = get_arch(model)
    heads, ffn = layer_shapes(model)
    config = model.config
    full_heads, full_ffn = getattr(config, arch.config_num_heads), getattr(config, arch.config_intermediate)
    if args.seq_len is not None and args.seq_len < 1:
        raise CliError(f"--seq-len must be >= 1, got {args.seq_len}")
    seq_len = args.seq_len or min(128, _max_seq_len(model))
    flops = count_flops(model, _example_batch(model, 1, seq_len))
    report = {
        "model": args.model,
        "class": type(model).__name__,
        "family": arch.model_type,
        "layers": len(blocks(model)),
        "heads_per_layer": heads,
        "ffn_per_layer": ffn,
        "full_heads_per_layer": full_heads,
        "full_ffn_per_layer": full_ffn,
        "parameters": sum(p.numel() for p in model.parameters()),
        f"train_step_flops_per_sequence_of_{seq_len}": flops,
    }
    print(json.dumps(report, indent=1))
    return 0


def cmd_prune(args) -> int:
    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise CliError(f"output {output} is a file, not a folder")
    if Path(args.model).exists() and Path(args.model).resolve() == output.resolve():
        raise CliError("--output must not be the model's own folder")
    if output.exists() and any(output.iterdir()) and not args.overwrite:
        raise CliError(f"output directory {output} is not empty; pass --overwrite to replace it")
    # Settings and ticket are checked before the (slow) model load, so bad input fails fast.
    ticket = Ticket.load(args.ticket) if args.ticket else None
    config = _ticket_config(args)
    model_config = load_config(args.model)
    if ticket is not None:
        check_ticket_fits(model_config, ticket)
    model = load_model(args.model, model_config)
    if ticket is None:
        ticket = random_scores_ticket(*layer_shapes(model), config, args.random_seed)
    batch = _example_batch(model, 1, min(128, _max_seq_len(model)))
    before = count_flops(model, batch)["linear"]
    prune(model, ticket)
    after = count_flops(model, batch)["linear"]
    if output.exists():  # --overwrite: nothing stale (an old tokenizer, say) may survive next to the new model
        shutil.rmtree(output)
    model.save_pretrained(output)
    ticket.save(output / "ticket.json")
    _copy_tokenizer(args.model, output)
    print(ticket.summary())
    print(f"linear-layer FLOPs per training step: {after / before:.3f} of the full model; saved to {output}")
    return 0


def _copy_tokenizer(source: str, output: Path) -> None:
    from .tasks import load_tokenizer

    try:
        load_tokenizer(source).save_pretrained(output)
    except ValueError:
        logger.warning("no tokenizer found at %s; the slim model was saved without one", source)


def _defaults(config_class) -> dict:
    """The default of every field of a config dataclass: each flag takes its default from the field it fills, so
    the default is defined once, in the dataclass."""
    import dataclasses

    return {f.name: f.default for f in dataclasses.fields(config_class) if f.default is not dataclasses.MISSING}


def _add_finetune_args(p: argparse.ArgumentParser) -> None:
    from .finetune import SEARCH_OBJECTIVES, FinetuneConfig

    d = _defaults(FinetuneConfig)
    p.add_argument("--model", required=True, help="pretrained encoder: local directory or hub name")
    p.add_argument("--task", help="sst2, mnli, qnli, qqp, cola, rte, mrpc, stsb or squad (omit for --train-file data)")
    p.add_argument("--data", help="folder with the task's files (GLUE layout / SQuAD JSON) or a hub dataset name")
    p.add_argument("--output", required=True, help="run folder")
    p.add_argument("--train-file", help="your own labelled data: .csv, .tsv or .jsonl")
    p.add_argument("--validation-file", help="your own validation data, same format")
    p.add_argument("--text-columns", help="one or two comma-separated text columns of your files")
    p.add_argument("--label-column", default=d["label_column"], help="label column of your files (%(default)s)")
    p.add_argument("--regression", action="store_true", help="your labels are real numbers")
    p.add_argument("--max-length", type=int, help="tokens per sequence (128; SQuAD 384)")
    p.add_argument("--pad-to-multiple-of", type=int, default=d["pad_to_multiple_of"],
                   help="pad classification batches to the next multiple of N tokens instead of their longest: "
                        "fewer batch shapes, more padded tokens (on a Xeon CPU ~5%% slower; GPUs' tensor cores want "
                        "multiples of 8); not bit-identical to the default (%(default)s: their longest)")
    p.add_argument("--doc-stride", type=int, default=d["doc_stride"], help="SQuAD window overlap (%(default)s)")
    p.add_argument("--max-train-samples", type=int, help="fixed random subset of the training set")
    p.add_argument("--max-eval-samples", type=int, help="fixed random subset of each evaluation set")
    p.add_argument("--epochs", type=float, help="baseline epochs (3; SQuAD 2)")
    p.add_argument("--lr", type=float, help="baseline learning rate (2e-5; SQuAD 3e-5)")
    p.add_argument("--earlybert-epochs", type=float, help="slim-model epochs (2; SQuAD keeps its default)")
    p.add_argument("--lr-scale", type=float, help="slim-model learning-rate multiplier (2; SQuAD 1)")
    p.add_argument("--batch-size", type=int, default=d["batch_size"], help="per-process batch size (%(default)s)")
    p.add_argument("--grad-accum", type=int, default=d["grad_accum"], help="gradient accumulation steps (%(default)s)")
    p.add_argument("--weight-decay", type=float, default=d["weight_decay"], help="(%(default)s)")
    p.add_argument("--warmup-ratio", type=float, default=d["warmup_ratio"], help="(%(default)s)")
    p.add_argument("--search-epoch-fraction", type=float, default=d["search_epoch_fraction"],
                   help="search budget in epochs (%(default)s)")
    p.add_argument("--search-max-steps", type=int, help="search budget in steps (the smaller budget wins)")
    p.add_argument("--search-objective", choices=SEARCH_OBJECTIVES, default=d["search_objective"],
                   help="loss the search minimises: the task's, or masked LM on the task's text through the "
                        "checkpoint's own MLM head (paper App. B) (%(default)s)")
    _search_flags(p)
    p.add_argument("--record-every", type=int, help="record a mask every N search steps (default: budget / 40)")
    _ticket_flags(p, TicketConfig.ffn_ratio)
    p.add_argument("--ticket-like", help="random method: copy the per-layer shape of this ticket.json")
    p.add_argument("--layerdrop", type=float, default=d["layerdrop"], help="LayerDrop rate while training (1/3)")
    p.add_argument("--checkpoint-every", type=int, default=d["checkpoint_every"],
                   help="optimizer steps between checkpoints (%(default)s)")
    p.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], help="default: bf16 on GPUs, no on CPU")
    p.add_argument("--resume", action="store_true", help="continue the run in --output")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")


def _search_flags(p) -> None:
    """The gates' penalty and learning rate and the early-bird rule: one declaration for every command."""
    from .gates import GateConfig
    from .search import SearchConfig

    p.add_argument("--l1", type=float, default=GateConfig.head_l1,
                   help=f"L1 strength lambda for all gates ({GateConfig.head_l1:g})")
    p.add_argument("--head-l1", type=float, help="lambda for head gates (default --l1)")
    p.add_argument("--ffn-l1", type=float, help="lambda for FFN gates (default --l1)")
    _gate_lr_flag(p)
    p.add_argument("--epsilon", type=float, default=SearchConfig.epsilon,
                   help=f"early-bird mask-distance threshold ({SearchConfig.epsilon:g})")
    p.add_argument("--patience", type=int, default=SearchConfig.patience,
                   help=f"early-bird, paper's rule (--window 0): previous masks to compare with ({SearchConfig.patience})")
    _window_flag(p)


def _gate_config(args):
    from .gates import GateConfig

    return GateConfig(head_l1=args.head_l1 if args.head_l1 is not None else args.l1,
                      ffn_l1=args.ffn_l1 if args.ffn_l1 is not None else args.l1, lr=args.gate_lr)


def _ticket_flags(p, ffn_ratio: float) -> None:
    """What a ticket prunes: one declaration for finetune, compare, pretrain and prune (pre-training's FFN ratio
    differs, 0.3 against 0.4, as in the paper)."""
    p.add_argument("--head-ratio", type=float, help="fraction of heads pruned per layer (1/3)")
    p.add_argument("--head-count", type=int, help="heads pruned per layer (instead of --head-ratio)")
    p.add_argument("--ffn-ratio", type=float, default=ffn_ratio, help=f"fraction of FFN neurons pruned ({ffn_ratio:g})")
    p.add_argument("--ffn-scope", choices=["global", "layer"], default=TicketConfig.ffn_scope,
                   help=f"FFN neurons ranked across all layers or within each ({TicketConfig.ffn_scope})")
    p.add_argument("--ffn-multiple", type=int, default=TicketConfig.ffn_multiple,
                   help="round each layer's FFN width to a multiple")


def _ticket_config(args) -> TicketConfig:
    return TicketConfig(head_ratio=args.head_ratio, head_count=args.head_count, ffn_ratio=args.ffn_ratio,
                        ffn_scope=args.ffn_scope, ffn_multiple=args.ffn_multiple)


def _gate_lr_flag(p) -> None:
    from .gates import GATE_LR, MODEL_LR

    def parse(text: str):
        if text == MODEL_LR:
            return text
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"give a number or {MODEL_LR!r}, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    p.add_argument("--gate-lr", type=parse, default=GATE_LR,
                   help=f"learning rate of the gates in the search ({GATE_LR:g}); '{MODEL_LR}': the model's, as in the paper")


def _window_flag(p) -> None:
    from .search import EARLY_BIRD_WINDOW

    p.add_argument("--window", type=float, default=EARLY_BIRD_WINDOW,
                   help="early-bird: stop once the masks of the last WINDOW x budget search steps forecast the "
                        "ticket within --epsilon of the one the rest of the budget would draw "
                        f"({EARLY_BIRD_WINDOW:g}; 0: the paper's rule, the previous --patience masks)")


def finetune_config(args, method: str) -> "FinetuneConfig":
    from .finetune import FinetuneConfig

    return FinetuneConfig(
        model=args.model, output=args.output, task=args.task, method=method, data=args.data,
        train_file=args.train_file, validation_file=args.validation_file,
        text_columns=tuple(c for c in (args.text_columns or "").split(",") if c),
        label_column=args.label_column, regression=args.regression, max_length=args.max_length,
        pad_to_multiple_of=args.pad_to_multiple_of, doc_stride=args.doc_stride,
        max_train_samples=args.max_train_samples, max_eval_samples=args.max_eval_samples,
        epochs=args.epochs, lr=args.lr, earlybert_epochs=args.earlybert_epochs, lr_scale=args.lr_scale,
        batch_size=args.batch_size, weight_decay=args.weight_decay, warmup_ratio=args.warmup_ratio,
        grad_accum=args.grad_accum, seed=getattr(args, "seed", 42), search_epoch_fraction=args.search_epoch_fraction,
        search_max_steps=args.search_max_steps,
        gates=_gate_config(args), ticket=_ticket_config(args),
        epsilon=args.epsilon, patience=args.patience, window=args.window, record_every=args.record_every,
        ticket_like=args.ticket_like, layerdrop=args.layerdrop,
        checkpoint_every=args.checkpoint_every, mixed_precision=args.mixed_precision,
        search_objective=args.search_objective,
    )


def cmd_finetune(args) -> int:
    from .finetune import finetune

    if args.target_saving is not None:
        return _finetune_to_target(args)
    results = finetune(finetune_config(args, args.method), resume=args.resume, overwrite=args.overwrite)
    say(json.dumps({k: results[k] for k in ("method", "task", "metrics", "total_step_time_s",
                                              "fraction_saved_vs_estimated_full")}, indent=1))
    return 0


def cmd_compare(args) -> int:
    from .compare import FIGURE, compare
    from .report import comparison_table

    seeds = [int(s) for s in args.seeds.split(",") if s]
    compare(finetune_config(args, "full"), args.methods.split(","), seeds, args.resume, args.overwrite, args.slice)
    # The folder's table (this call's runs and earlier calls' other seeds), last, after every log line.
    root = Path(args.output)
    runs = [json.loads(p.read_text()) for p in sorted(root.glob("*-seed*/results.json"))]
    say(f"report: {root / 'report.md'}; figure: {root / FIGURE}\n\n{comparison_table(runs)[1]}")
    return 0


def cmd_sweep(args) -> int:
    from .report import sweep_table
    from .sweep import FIGURE, GridError, parse_values, sweep

    if args.head_ratio is not None or args.head_count is not None:
        raise CliError("sweep takes the heads to prune from --heads (counts or fractions), "
                       "not --head-ratio / --head-count")
    from .target import TargetError, reaching

    flags = {"heads": "--heads", "ffn_ratios": "--ffn-ratio", "seeds": "--seeds"}
    try:
        grid = {axis: parse_values(getattr(args, axis), axis) for axis in flags}
        select = None if args.target_saving is None else reaching(args.target_saving)
        results = sweep(finetune_config(args, "earlybert"), grid["heads"], grid["ffn_ratios"], grid["seeds"],
                        args.resume, args.overwrite, select=select)
    except GridError as e:
        raise CliError(e.naming(flags[e.axis])) from None
    except TargetError as e:
        raise CliError(str(e)) from None
    root = Path(args.output)
    say(f"report: {root / 'report.md'}; figure: {root / FIGURE}\n\n{sweep_table(results)}")
    return 0


def _pair(kind):
    def parse(text: str):
        values = [kind(v) for v in text.split(",")]
        if len(values) == 1:
            values *= 2
        if len(values) != 2:
            raise argparse.ArgumentTypeError(f"give one value or two (phase 1,phase 2), got {text!r}")
        return tuple(values)

    return parse


def _pretrain_config(args, method: str, output: str, ticket_like: str | None) -> "PretrainConfig":
    from .pretrain import PretrainConfig

    return PretrainConfig(
        config=args.config, tokenizer=args.tokenizer, text=tuple(args.text), output=output, method=method,
        steps=args.steps, phase1_fraction=args.phase1_fraction, seq_len=args.seq_len, batch_size=args.batch_size,
        grad_accum=args.grad_accum, lr=args.lr, warmup_ratio=args.warmup_ratio, weight_decay=args.weight_decay,
        held_out=args.held_out, search_steps=args.search_steps,
        gates=_gate_config(args), ticket=_ticket_config(args),
        epsilon=args.epsilon, patience=args.patience, window=args.window, step_fraction=args.step_fraction,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every, mixed_precision=args.mixed_precision, cache_dir=args.cache_dir,
        ticket_like=ticket_like, optimizer=args.optimizer,
    )


def cmd_pretrain(args) -> int:
    from .pretrain import compare_pretraining, comparison_summary, pretrain

    if args.method == "compare":  # --ticket-like goes to the random run (default: EarlyBERT's ticket)
        results = compare_pretraining(_pretrain_config(args, "full", args.output, None), args.resume, args.overwrite,
                                      args.stop_after_steps, ticket_like=args.ticket_like)
    else:
        config = _pretrain_config(args, args.method, args.output, args.ticket_like)
        results = {args.method: pretrain(config, resume=args.resume, overwrite=args.overwrite,
                                         stop_after=args.stop_after_steps)}
    paused = [m for m, r in results.items() if r is None]
    if paused:  # with compare, each method ran a slice: calling again interleaves the runs
        say(f"paused ({', '.join(paused)}) after {args.stop_after_steps} steps; run again with --resume to continue")
        return 0
    if args.method == "compare":
        from .runs import atomic_write_text

        summary = comparison_summary(results)
        atomic_write_text(Path(args.output) / "comparison.json", json.dumps(summary, indent=1))
    else:
        summary = {m: {"total_step_time_s": r["total_step_time_s"], "held_out": r["held_out"]}
                   for m, r in results.items()}
    say(json.dumps(summary, indent=1))
    return 0


def _add_sweep_parser(sub) -> None:
    from .finetune import FinetuneConfig
    from .sweep import FFN_RATIOS, HEADS

    # The grid's --ffn-ratio replaces finetune's single one (conflict_handler="resolve"); the search's early-bird
    # rule watches the default ticket, so the FFN ratio the dropped flag filled gets its default here.
    p = sub.add_parser("sweep", help="one search, a ticket and a slim training per (heads, FFN ratio), the full "
                       "baseline once: score against time saved (paper Table 5)", conflict_handler="resolve")
    _add_finetune_args(p)
    for flag in ("--head-ratio", "--head-count"):  # --heads replaces them; cmd_sweep says so to whoever gives them
        p.add_argument(flag, help=argparse.SUPPRESS)
    p.add_argument("--heads", default=",".join(map(str, HEADS)), help="heads pruned per layer, comma-separated: "
                   "counts (3) or fractions of each layer's heads (0.25) (%(default)s)")
    p.add_argument("--ffn-ratio", dest="ffn_ratios", default=",".join(map(str, FFN_RATIOS)),
                   help="fractions of FFN neurons pruned, comma-separated (%(default)s)")
    p.add_argument("--seeds", default=str(_defaults(FinetuneConfig)["seed"]),
                   help="comma-separated seeds (%(default)s)")
    _add_target_flag(p, "only the grid points predicted to reach F are trained (decided after the first search)")
    p.set_defaults(func=cmd_sweep, ffn_ratio=TicketConfig.ffn_ratio)


def _finetune_to_target(args) -> int:
    from .target import TargetError, finetune_to_target

    if args.method != "earlybert" or args.head_ratio is not None or args.head_count is not None:
        raise CliError("--target-saving picks the ticket's ratios itself: use it with the earlybert method and "
                       "without --head-ratio / --head-count")
    try:
        results = finetune_to_target(finetune_config(args, "earlybert"), args.target_saving, resume=args.resume,
                                     overwrite=args.overwrite)
    except TargetError as e:
        raise CliError(str(e)) from None
    say(json.dumps({k: results[k] for k in ("task", "target", "picked", "predicted_saving", "predicted_saving_flops",
                                              "measured_saving", "score")}, indent=1))
    say(f"report: {Path(args.output) / 'report.md'}")
    return 0


def _add_target_flag(p, what: str = "one search, then the heads and FFN ratio predicted to reach F with the least "
                     "pruning are picked (OUT/search, OUT/run, OUT/report.md)") -> None:
    p.add_argument("--target-saving", type=float, metavar="F", help=f"save this fraction of full fine-tuning's time: "
                   f"{what}")


def cmd_ablate(args) -> int:
    from .ablate import ablate_epochs, ablate_lambda, ablate_scope, ablate_stop
    from .sweep import GridError, parse_values

    flags = {"stop_at": "--stop-at", "slim_epochs": "--slim-epochs", "lr_scales": "--lr-scales",
             "lambdas": "--lambdas"}
    base, again = finetune_config(args, "earlybert"), (args.resume, args.overwrite)
    try:
        if args.ablation == "stop":
            ablate_stop(base, parse_values(args.stop_at, "stop_at"), *again)
        elif args.ablation == "epochs":
            ablate_epochs(base, parse_values(args.slim_epochs, "slim_epochs"), parse_values(args.lr_scales,
                                                                                              "lr_scales"), *again)
        elif args.ablation == "lambda":
            ablate_lambda(base, parse_values(args.lambdas, "lambdas"), *again)
        else:
            ablate_scope(base, *again)
    except GridError as e:
        raise CliError(e.naming(flags[e.axis])) from None
    report = Path(args.output) / "report.md"
    say(f"report: {report}\n\n{report.read_text()}")
    return 0


def _add_ablate_parser(sub) -> None:
    from .ablate import LAMBDAS, LR_SCALES, SLIM_EPOCHS, STOP_AT
    from .finetune import FinetuneConfig

    p = sub.add_parser("ablate", help="an ablation: stop (when to stop the search, paper Fig. 3), epochs (slim "
                       "epochs x learning-rate scale, Fig. 2), lambda or scope (Table 3)")
    p.add_argument("ablation", choices=("stop", "epochs", "lambda", "scope"), help="stop: one search run to the "
                   "latest --stop-at with the early-bird rule off, a ticket from the coefficients of each stop step, "
                   "a slim training per ticket; epochs: one search, a slim training per --slim-epochs x --lr-scales; "
                   "lambda: an earlybert run per --lambdas (its own search); scope: one search, FFN pruned globally "
                   "and layer-wise")
    _add_finetune_args(p)
    p.add_argument("--stop-at", default=",".join(map(str, STOP_AT)),
                   help="search stop times, fractions of the first epoch, comma-separated (%(default)s)")
    p.add_argument("--slim-epochs", default=",".join(f"{e:g}" for e in SLIM_EPOCHS),
                   help="epochs: slim-training epochs, comma-separated (%(default)s)")
    p.add_argument("--lr-scales", default=",".join(f"{s:g}" for s in LR_SCALES),
                   help="epochs: slim learning-rate multipliers of --lr, comma-separated (%(default)s)")
    p.add_argument("--lambdas", default=",".join(f"{v:g}" for v in LAMBDAS),
                   help="lambda: L1 coefficients of the gates' penalty, heads and FFN alike (%(default)s)")
    p.add_argument("--seed", type=int, default=_defaults(FinetuneConfig)["seed"], help="(%(default)s)")
    p.set_defaults(func=cmd_ablate)


def _add_choosing_parsers(sub) -> None:
    """Choosing the ticket from one search: the trade-off sweep and the ablations."""
    _add_sweep_parser(sub)
    _add_ablate_parser(sub)


def build_parser() -> argparse.ArgumentParser:
    from .compare import SLICE_STEPS
    from .finetune import METHODS, FinetuneConfig
    from .pretrain import METHODS as PRETRAIN_METHODS
    from .pretrain import NAMED_CONFIGS, OPTIMIZERS, PAPER_STEPS, PRETRAIN_FFN_RATIO, PretrainConfig

    parser = argparse.ArgumentParser(prog="earlybert", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"earlybert {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("inspect", help="show a model's family, per-layer shapes, parameters and FLOPs")
    p.add_argument("model", help="local directory or hub name")
    p.add_argument("--seq-len", type=int, default=None, help="sequence length for the FLOP count (default 128)")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("prune", help="apply a ticket and save the slim model (reloads with AutoModel*)")
    p.add_argument("model", help="local directory or hub name")
    p.add_argument("--output", required=True, help="directory for the slim model and its ticket.json")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--ticket", help="ticket.json to apply")
    source.add_argument("--random-seed", type=int, help="draw a ticket from random coefficients (a baseline)")
    _ticket_flags(p, TicketConfig.ffn_ratio)
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("finetune", help="search, draw, train the slim model, evaluate, report (one method)")
    _add_finetune_args(p)
    p.add_argument("--method", choices=METHODS, default=_defaults(FinetuneConfig)["method"])
    p.add_argument("--seed", type=int, default=_defaults(FinetuneConfig)["seed"], help="(%(default)s)")
    p.set_defaults(func=cmd_finetune)
    _add_target_flag(p)

    p = sub.add_parser("pretrain", help="MLM pre-training from a random init: full, earlybert, random, or compare all")
    p.add_argument("--config", required=True, help=f"{', '.join(NAMED_CONFIGS)}, or a config.json / folder")
    p.add_argument("--tokenizer", required=True, help="tokenizer folder or hub name, or wordpiece:N to train an "
                   "N-token WordPiece vocabulary on --text (cached with the tokenized text)")
    p.add_argument("--text", required=True, nargs="+", help="text files or folders of *.txt (blank line = new doc)")
    p.add_argument("--output", required=True, help="run folder (compare: one subfolder per method)")
    d = _defaults(PretrainConfig)
    p.add_argument("--method", choices=[*PRETRAIN_METHODS, "compare"], default=d["method"], help="random: a random "
                   "ticket trained like EarlyBERT's; compare: full, earlybert, random of EarlyBERT's shape (%(default)s)")
    p.add_argument("--ticket-like", help="random method: copy the per-layer shape of this ticket.json (default: "
                   "the ticket ratios; compare: EarlyBERT's ticket)")
    p.add_argument("--steps", type=int, default=d["steps"], help="full run's optimizer steps, both phases (%(default)s)")
    p.add_argument("--phase1-fraction", type=float, default=d["phase1_fraction"],
                   help="share of steps at the first length (%(default)s)")
    p.add_argument("--seq-len", type=_pair(int), default=d["seq_len"], help="per phase (%(default)s)")
    p.add_argument("--batch-size", type=_pair(int), default=d["batch_size"],
                   help="per process and micro-batch (%(default)s)")
    p.add_argument("--grad-accum", type=_pair(int), default=d["grad_accum"],
                   help="per phase, for large effective batches (%(default)s)")
    p.add_argument("--lr", type=_pair(float), default=d["lr"], help="peak learning rate per phase (%(default)s)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=d["optimizer"],
                   help="LAMB, the paper's, or AdamW with the same groups, betas and epsilon (%(default)s)")
    p.add_argument("--warmup-ratio", type=_pair(float), default=d["warmup_ratio"], help="per phase (%(default)s)")
    p.add_argument("--weight-decay", type=float, default=d["weight_decay"], help="(%(default)s)")
    p.add_argument("--held-out", type=float, default=d["held_out"],
                   help="tail of the text kept for MLM loss (%(default)s)")
    p.add_argument("--search-steps", type=int, help=f"search budget (default 400 x steps / {PAPER_STEPS})")
    _search_flags(p)
    _ticket_flags(p, PRETRAIN_FFN_RATIO)
    p.add_argument("--step-fraction", type=float, default=d["step_fraction"],
                   help="EarlyBERT trains this share of steps (%(default)s)")
    p.add_argument("--seed", type=int, default=d["seed"], help="(%(default)s)")
    p.add_argument("--checkpoint-every", type=int, default=d["checkpoint_every"], help="(%(default)s)")
    p.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"])
    p.add_argument("--cache-dir", help="tokenized-text cache (default: .earlybert-cache beside --output)")
    p.add_argument("--stop-after-steps", type=int, help="pause (checkpoint and exit 0) after this many steps; "
                   "--resume continues. With compare, each method runs a slice: repeated calls interleave them")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("compare", help="several methods and seeds on the same data, one table (paper Table 2)")
    _add_finetune_args(p)
    p.add_argument("--methods", default=",".join(METHODS), help="(%(default)s)")
    p.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (1,2,3)")
    p.add_argument("--slice", type=int, default=SLICE_STEPS, help="the methods of a seed take turns, this many "
                   "optimizer steps for the longest and a proportional share for the others, so that a drift in the "
                   "machine's speed falls on all alike; each turn ends at a checkpoint (on a fast GPU, a cost: 0 runs "
                   "each method to its end in turn) (%(default)s)")
    p.set_defaults(func=cmd_compare)
    _add_choosing_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Under torchrun / accelerate launch, the other processes keep quiet but for errors: one job, one log.
    logging.basicConfig(level=logging.INFO if is_main_process() else logging.ERROR,
                        format="%(levelname)s %(name)s: %(message)s")
    if not is_main_process():
        import transformers

        transformers.logging.set_verbosity_error()
    finished = False
    try:
        status = args.func(args)
        finished = True
        return status
    except (CliError, ValueError, TypeError) as e:
        print(f"earlybert: error: {e}", file=sys.stderr)
        return 2
    finally:
        leave_process_group(wait=finished)


def leave_process_group(wait: bool) -> None:
    """Under torchrun: leave the process group before the interpreter exits. Left to process teardown, a rank whose
    peer has already exited can find gloo's sockets closed under it and abort (SIGABRT) after its work is done,
    failing the whole launch. `wait`: the command succeeded, so every rank reaches this barrier; after an error a
    barrier could wait for a rank that never comes."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    if wait:
        dist.barrier()
    dist.destroy_process_group()
