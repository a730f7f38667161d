"""Command line: a thin layer over the functional API.

    earlybert inspect MODEL                                 # family, per-layer shapes, parameters, FLOPs
    earlybert prune MODEL --ticket ticket.json --output DIR # apply a ticket, save a slim model that reloads
    earlybert prune MODEL --random-seed 0 --output DIR      # ... or a default-shaped ticket drawn at random

MODEL is a local directory or a hub name (hub names need a network).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from . import __version__
from .archs import blocks, get_arch, layer_shapes
from .flops import count_flops
from .prune import check_ticket_fits, prune
from .ticket import Ticket, TicketConfig, draw_ticket

logger = logging.getLogger("earlybert")


class CliError(Exception):
    """Bad input: reported as one line and exit status 2."""


def load_config(name_or_path: str):
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:
        raise CliError(f"cannot load a model config from {name_or_path!r}: {str(e).splitlines()[0]}") from None
    get_arch(config.model_type)
    return config


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
    # RoBERTa offsets positions by padding_idx + 1; staying 2 under the table size is safe for every family.
    return model.config.max_position_embeddings - 2


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
    if output.exists() and any(output.iterdir()) and not args.overwrite:
        raise CliError(f"output directory {output} is not empty; pass --overwrite to replace it")
    # Settings and ticket are checked before the (slow) model load, so bad input fails fast.
    ticket = Ticket.load(args.ticket) if args.ticket else None
    config = TicketConfig(
        head_ratio=None if args.head_count is not None else args.head_ratio,
        head_count=args.head_count,
        ffn_ratio=args.ffn_ratio,
        ffn_scope=args.ffn_scope,
        ffn_multiple=args.ffn_multiple,
    )
    model_config = load_config(args.model)
    if ticket is not None:
        check_ticket_fits(model_config, ticket)
    model = load_model(args.model, model_config)
    if ticket is None:
        generator = torch.Generator().manual_seed(args.random_seed)
        heads, ffn = layer_shapes(model)
        ticket = draw_ticket(
            [torch.rand(n, generator=generator) for n in heads],
            [torch.rand(n, generator=generator) for n in ffn],
            config,
        )
        ticket.config["random_seed"] = args.random_seed
    batch = _example_batch(model, 1, min(128, _max_seq_len(model)))
    before = count_flops(model, batch)["linear"]
    prune(model, ticket)
    after = count_flops(model, batch)["linear"]
    model.save_pretrained(output)
    ticket.save(output / "ticket.json")
    _copy_tokenizer(args.model, output)
    print(ticket.summary())
    print(f"linear-layer FLOPs per training step: {after / before:.3f} of the full model; saved to {output}")
    return 0


def _copy_tokenizer(source: str, output: Path) -> None:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, TypeError):
        logger.warning("no tokenizer found at %s; the slim model was saved without one", source)
        return
    tokenizer.save_pretrained(output)


def build_parser() -> argparse.ArgumentParser:
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
    p.add_argument("--head-ratio", type=float, default=1 / 3, help="fraction of heads pruned per layer (1/3)")
    p.add_argument("--head-count", type=int, default=None, help="heads pruned per layer (overrides ratio)")
    p.add_argument("--ffn-ratio", type=float, default=0.4, help="fraction of FFN neurons pruned (0.4)")
    p.add_argument("--ffn-scope", choices=["global", "layer"], default="global", help="FFN pruning scope")
    p.add_argument("--ffn-multiple", type=int, default=1, help="round each layer's FFN width to a multiple")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    p.set_defaults(func=cmd_prune)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (CliError, ValueError, TypeError) as e:
        print(f"earlybert: error: {e}", file=sys.stderr)
        return 2
