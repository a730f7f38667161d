"""Does a pre-training regime get past the context-free floor? Full pre-training alone, held-out curve only.

Before the three-way benchmark (bench/pretrain.py, hours) is worth running, its full model must learn something
that needs the context: a held-out MLM loss below the context-free floor (`earlybert.pretrain.context_free_loss`),
not merely below the unigram entropy. This trains the full model of one candidate regime (every bench/pretrain.py
setting accepted, same defaults, same text, tokenizer and token cache) and records the held-out MLM loss every
--every steps into its run folder's held_out_curve.json, printing the curve as it grows; rerunning continues.

    python bench/pretrain_regime.py --name tiny-seq32 -- --config bert-tiny --steps 8000 --seq-len 32,512 \
        --batch-size 128,8
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import pretrain as benchmark  # bench/pretrain.py: its settings, defaults, data and floors
from earlybert.pretrain import CURVE, pretrain


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    own, rest = argv[:split], argv[split + 1:]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", required=True, help="run folder name under RUNS/regimes/")
    p.add_argument("--every", type=int, default=500, help="steps between held-out measurements (%(default)s)")
    args = p.parse_args(own)
    if args.every < 1:
        p.error(f"--every must be >= 1, got {args.every}")
    settings = benchmark.parse_args(rest)  # everything after `--`: bench/pretrain.py's own flags
    base = benchmark.base_config(settings)
    config = replace(base, method="full", output=str(settings.runs / "regimes" / args.name))
    floors = benchmark.unigram_plateau(config)
    print(f"floors at length {floors['sequence_length']}: unigram {floors['entropy_nats']:.3f}, "
          f"context_free {floors['context_free_nats']:.3f}", flush=True)
    while True:
        done = pretrain(config, resume=True, stop_after=args.every, curve_sequences=settings.curve_sequences)
        curve = json.loads((Path(config.output) / CURVE).read_text())
        print("curve (steps, held-out loss):", [(point["steps"], round(point["mlm_loss"], 3)) for point in curve],
              flush=True)
        if done is not None:
            return


if __name__ == "__main__":
    main()
