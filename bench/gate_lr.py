"""Which learning rate should the gates have? EarlyBERT tickets searched at several gate learning rates on SST-2.

For each seed and gate learning rate: the search (gates + L1, lambda 1e-4) runs its whole 0.2-epoch budget and
records the would-be mask at EVERY step (the early-bird rule is switched off, epsilon 0), the ticket drawn at the
end of the budget trains as the slim model (2 epochs at 2x lr) and is evaluated on the SST-2 dev set. Besides
the score, each run reports how far the gates moved and how the mask settled (distance of the mask at each step
to the final one), which is the data the early-bird rule is designed on (see earlybert.search).

    python bench/gate_lr.py                              # 10k SST-2 sentences, seeds 1,2, gate lr model,1e-3,1e-2,5e-2
    python bench/gate_lr.py --gate-lrs model,1e-2 --seeds 1

Runs live in bench/runs/gate_lr/ (not committed) and are kept: rerunning continues where it stopped. Results go
to bench/results/gate_lr_cpu.json and .md. bf16 autocast is used where the CPU has native bf16 (avx512_bf16 or
AMX), fp32 elsewhere; the setting is recorded.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from earlybert.finetune import FinetuneConfig, finetune
from earlybert.gates import GateConfig
from earlybert.search import EarlyBird
from earlybert.runs import atomic_write_text
from earlybert.ticket import Ticket

from early_bird import replay  # noqa: E402  (bench/ is the script's folder)
from machine import cpu_name, minilm_path, native_bf16  # noqa: E402

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data" / "glue"


def settle_profile(history: dict) -> dict:
    """Distance of every recorded mask to the last one (heads, FFN): how the ticket settled over the search."""
    tracker = EarlyBird()
    tracker.load_state_dict(history)
    return {"steps": tracker.steps,
            "heads_to_final": tracker.distance_matrix("heads")[:, -1].round(4).tolist(),
            "ffn_to_final": tracker.distance_matrix("ffn")[:, -1].round(4).tolist()}


RULES = {  # (window as a share of the budget, epsilon); window 0 is the paper's rule (previous 5 records only)
    "paper (5 records, eps 0.1)": (0.0, 0.1),
    "window 0.1, eps 0.1": (0.1, 0.1),
    "window 0.25, eps 0.1": (0.25, 0.1),
    "window 0.4, eps 0.1": (0.4, 0.1),
    "window 0.25, eps 0.05": (0.25, 0.05),
}


def replay_rules(history: dict, budget: int) -> dict:
    """Where each candidate early-bird rule would have stopped on the recorded masks (every step, and every 4th
    step), and how far the ticket drawn there is from the one the whole budget drew (early_bird.replay)."""
    full = EarlyBird()
    full.load_state_dict(history)
    out = {}
    for name, (window, epsilon) in RULES.items():
        verdicts = {}
        for every in (1, 4):
            fired = replay(full, budget, every, {"window": window, "epsilon": epsilon})
            verdicts[f"every_{every}"] = None if fired is None else {
                "step": fired["step"], "heads_to_budget_ticket": fired["heads_to_last"],
                "ffn_to_budget_ticket": fired["ffn_to_last"]}
        out[name] = verdicts
    return out


def gate_spread(ticket: Ticket) -> dict:
    """Summary of the final coefficients: how far the gates moved from their initial 1.0."""
    heads = torch.cat([torch.tensor(c) for c in ticket.head_scores]).abs()
    ffn = torch.cat([torch.tensor(c) for c in ticket.ffn_scores]).abs()
    return {
        "head_abs_min_mean_max": [heads.min().item(), heads.mean().item(), heads.max().item()],
        "ffn_abs_min_mean_max": [ffn.min().item(), ffn.mean().item(), ffn.max().item()],
        "ffn_abs_mean_per_layer": [torch.tensor(c).abs().mean().item() for c in ticket.ffn_scores],
        "max_move_from_1": max((heads - 1).abs().max().item(), (ffn - 1).abs().max().item()),
        "kept_ffn_per_layer": ticket.kept_ffn,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gate-lrs", default="model,1e-3,1e-2,5e-2")
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--max-train-samples", type=int, default=10000)
    parser.add_argument("--mixed-precision", choices=["auto", "no", "bf16"], default="auto")
    parser.add_argument("--runs", default=str(HERE / "runs" / "gate_lr"))
    parser.add_argument("--output", default=str(HERE / "results" / "gate_lr_cpu"))
    args = parser.parse_args()
    mixed = args.mixed_precision if args.mixed_precision != "auto" else ("bf16" if native_bf16() else "no")
    started = time.time()
    runs = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for lr in args.gate_lrs.split(","):
            out = Path(args.runs) / f"gate-lr-{lr}-seed{seed}"
            config = FinetuneConfig(model=minilm_path(), task="sst2", data=str(DATA), output=str(out),
                                    max_train_samples=args.max_train_samples, seed=seed, gates=GateConfig(lr=lr),
                                    epsilon=0.0, record_every=1, checkpoint_every=100, mixed_precision=mixed)
            print(f"== gate lr {lr} seed {seed}", flush=True)
            done = out / "results.json"
            results = json.loads(done.read_text()) if done.exists() else finetune(config, resume=out.exists())
            ticket = Ticket.load(out / "ticket.json")
            history = json.loads((out / "mask_history.json").read_text())
            steps = results["stages"]["search"]["steps"]
            runs.append({"gate_lr": lr, "seed": seed, "score": results["score"], "search_steps": steps,
                         "gates": gate_spread(ticket), "settle": settle_profile(history),
                         "rules": replay_rules(history, steps), "ticket": results["ticket"]})
            write(args, mixed, runs, started)


def write(args, mixed: str, runs: list[dict], started: float) -> None:
    by_lr: dict[str, list[dict]] = {}
    for r in runs:
        by_lr.setdefault(r["gate_lr"], []).append(r)
    rows = []
    for lr, group in by_lr.items():
        scores = [r["score"] for r in group]
        rows.append({"gate_lr": lr, "seeds": [r["seed"] for r in group], "scores": scores,
                     "mean": statistics.mean(scores), "std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
                     "max_move_from_1": statistics.mean(r["gates"]["max_move_from_1"] for r in group),
                     "ffn_abs_mean": statistics.mean(r["gates"]["ffn_abs_min_mean_max"][1] for r in group),
                     "ffn_to_final_at_half": statistics.mean(
                         r["settle"]["ffn_to_final"][len(r["settle"]["steps"]) // 2] for r in group)})
    result = {"command": "python " + " ".join(sys.argv), "settings": vars(args), "mixed_precision": mixed,
              "machine": {"cpu": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__},
              "rows": rows, "runs": runs, "elapsed_s": time.time() - started}
    out = Path(args.output)
    atomic_write_text(out.with_suffix(".json"), json.dumps(result, indent=1))
    lines = [
        "# Gate learning rate: EarlyBERT tickets on SST-2 (MiniLM-L6, CPU)", "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']['cpu']}, {result['machine']['threads']} threads, torch {torch.__version__}, "
        f"mixed precision {mixed}  ",
        f"{args.max_train_samples} training sentences (fixed subset), SST-2 dev (872) for the score. Search: the whole "
        "0.2-epoch budget, lambda 1e-4, the mask recorded at every step; slim model 2 epochs at 4e-5 from the "
        "pretrained weights.", "",
        "| gate lr | seeds | dev accuracy (mean ± std) | per seed | largest gate move from 1.0 | mean FFN abs(c) | "
        "FFN mask distance to final, half-way |",
        "|---|---|---|---|---|---|---|",
        *(f"| {r['gate_lr']} | {len(r['seeds'])} | {r['mean']:.2f} ± {r['std']:.2f} | "
          f"{', '.join(f'{s:.2f}' for s in r['scores'])} | {r['max_move_from_1']:.2g} | {r['ffn_abs_mean']:.3f} | "
          f"{r['ffn_to_final_at_half']:.3f} |" for r in rows),
        "",
        "'model': the gates train at the model's learning rate (2e-5), as in the paper and its code.", "",
        "## Early-bird rules replayed on the recorded masks", "",
        "Where each rule would have stopped the search (of its 63-step budget), recording every step / every 4th "
        "step, and the normalised mask distance (heads / FFN) from the ticket drawn there to the ticket of the "
        "whole budget. '-': the rule does not fire within the budget.", "",
        "| gate lr | seed | " + " | ".join(RULES) + " |",
        "|---|---|" + "---|" * len(RULES),
        *(f"| {r['gate_lr']} | {r['seed']} | " + " | ".join(_verdict(r["rules"][name]) for name in RULES) + " |"
          for r in runs),
        "",
    ]
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines))


def _verdict(v: dict) -> str:
    def one(x):
        return "-" if x is None else f"{x['step']} ({x['heads_to_budget_ticket']:.2f}/{x['ffn_to_budget_ticket']:.2f})"

    return f"{one(v['every_1'])}; {one(v['every_4'])}"


if __name__ == "__main__":
    main()
