"""Why a slim model's step ran slower inside a fine-tuning run than on fixed batches: oneDNN's kernel cache.

On the CPU, PyTorch builds a oneDNN kernel for every shape of every bf16 matrix product and caches it, 1,024
kernels by default. Real batches are padded to their longest sentence, so each length is a new set of shapes, and a
pruned model has a different FFN width in every layer: a run cycles through more shapes than the cache holds and
rebuilds kernels at nearly every step. Fixed batches (bench/step_time.py) never show it.

Each setting runs in a child process of its own (the capacity is read once per process), the settings alternate
over `--reps` rounds so drift of the machine falls on all alike, and inside each child the full model and its
EarlyBERT-shaped slice (1/3 heads per layer, 40% FFN globally) train side by side on the same real SST-2 batches,
in alternating order. One step = forward + backward + clipping + fused AdamW, bf16 autocast where the CPU has
bf16 instructions, as in `earlybert finetune`. A setting's step time is the median over the second half of its
steps (each length has been seen by then).

    python bench/shape_cache.py                    # settings: cache 1024 (oneDNN's default), 16384, pad to x8
    python bench/shape_cache.py --steps 100 --reps 1

Results: bench/results/shape_cache_cpu.json and .md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SETTINGS = {  # name -> (ONEDNN_PRIMITIVE_CACHE_CAPACITY, pad_to_multiple_of)
    "cache-1024": (1024, None),  # oneDNN's default, what earlybert ran with before it widened the cache
    "cache-16384": (16384, None),  # earlybert's default (earlybert.ONEDNN_CACHE_CAPACITY)
    "cache-1024-pad8": (1024, 8),  # fewer shapes instead of a wider cache (changes the dropout stream: not adopted)
    "cache-16384-pad8": (16384, 8),  # both: what padding to x8 would still buy on top of earlybert's default
    # padded to the longest and to x8 in ONE process, the four arms taking turns on the same batches: the settings
    # above compare processes that ran minutes apart, and this machine's speed drifted by up to 30% between them
    "cache-16384-paired": (16384, "paired"),
}


def child(args) -> dict:
    """One setting: full and slim step times on real SST-2 batches, in this process."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import earlybert as eb
    from earlybert.archs import layer_shapes
    from earlybert.ticket import random_scores_ticket
    from machine import minilm_path, native_bf16

    torch.manual_seed(0)
    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    with open(args.data) as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    random.Random(0).shuffle(rows)  # a fixed 10,000-sentence subset, as bench/finetune_glue.py trains on
    rows = rows[:10_000]
    pad = SETTINGS[args.setting][1]
    pads = (None, 8) if pad == "paired" else (pad,)

    def batch(i: int, multiple: int | None) -> dict:
        chunk = rows[i * args.batch_size : (i + 1) * args.batch_size]
        out = tokenizer([r[0] for r in chunk], padding=True, truncation=True, max_length=128, return_tensors="pt",
                        pad_to_multiple_of=multiple)
        out["labels"] = torch.tensor([int(r[1]) for r in chunk])
        return out

    arms = {}  # name -> (model, optimizer, padding multiple): "full", "slim", and "full-pad8", "slim-pad8" if paired
    for multiple in pads:
        for name in ("full", "slim"):
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).train()
            if name == "slim":
                eb.prune(model, random_scores_ticket(*layer_shapes(model), seed=0))
            key = f"{name}-pad{multiple}" if pad == "paired" and multiple else name
            arms[key] = (model, torch.optim.AdamW(model.parameters(), lr=4e-5, fused=True), multiple)
    bf16 = native_bf16() if args.bf16 == "auto" else args.bf16 == "yes"
    times: dict[str, list[float]] = {name: [] for name in arms}
    lengths = []
    names = list(arms)
    for i in range(args.steps):
        batches = {multiple: batch(i, multiple) for multiple in pads}
        lengths.append(batches[pads[0]]["input_ids"].shape[1])
        for name in names[i % len(names):] + names[: i % len(names)]:  # every arm in every position in turn
            model, optimizer, multiple = arms[name]
            b = batches[multiple]
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model(**b).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times[name].append(time.perf_counter() - start)
    half = args.steps // 2
    medians = {name: statistics.median(t[half:]) for name, t in times.items()}
    out = {"setting": args.setting, "cache": os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY"), "pad": pad,
           "full_s": medians["full"], "slim_s": medians["slim"], "ratio": medians["slim"] / medians["full"],
           "bf16": bf16, "distinct_lengths": len(set(lengths)), "steps": args.steps}
    if pad == "paired":
        out.update(full_pad8_s=medians["full-pad8"], slim_pad8_s=medians["slim-pad8"],
                   ratio_pad8=medians["slim-pad8"] / medians["full-pad8"])
    return out


def to_markdown(result: dict) -> str:
    lines = [
        "# oneDNN's kernel cache and the slim / full step ratio on real SST-2 batches (MiniLM-L6, CPU)", "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']}, 1 thread per child, torch {result['torch']}, bf16 autocast: "
        f"{result['rounds'][0][0]['bf16']}  ",
        f"{result['steps']} steps of 32 sentences per setting and round (batches padded to their longest, or to "
        "the next multiple of 8 where the setting says pad8); median of the second half. Settings alternate over "
        "rounds, each in a process of its own.", "",
        "| setting | distinct lengths | full step (s) | slim step (s) | slim / full | full vs cache-1024 | "
        "slim vs cache-1024 |",
        "|---|---|---|---|---|---|---|",
    ]
    base = result["summary"].get("cache-1024")  # oneDNN's default, where it was measured

    def against(s: dict, key: str) -> str:
        return f"{s[key] / base[key] - 1:+.1%}" if base else "-"

    for name, s in result["summary"].items():
        lengths = s.get("distinct_lengths", "-")  # older results files did not keep it per setting
        lines.append(f"| {name} | {lengths} | {s['full_s']:.4f} | {s['slim_s']:.4f} | {s['ratio']:.3f} | "
                     f"{against(s, 'full_s')} | {against(s, 'slim_s')} |")
    lines += ["", "Per round (full / slim, s): " + "; ".join(
        ", ".join(f"{r['setting']} {r['full_s']:.3f}/{r['slim_s']:.3f}" for r in rnd) for rnd in result["rounds"]), ""]
    for name, s in result["summary"].items():
        if "ratio_pad8" in s:
            lines += [f"{name}: padded to x8 and to the longest in one process, the four arms taking turns on the same "
                      f"batches. Padded to x8: full {s['full_pad8_s']:.4f} s ({s['full_pad8_s'] / s['full_s'] - 1:+.1%} "
                      f"against the longest), slim {s['slim_pad8_s']:.4f} s ({s['slim_pad8_s'] / s['slim_s'] - 1:+.1%}); "
                      f"slim / full {s['ratio_pad8']:.3f} against {s['ratio']:.3f}.", ""]
    if result.get("note"):
        lines += [result["note"], ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--data", default=str(HERE.parents[1] / "shared" / "data" / "glue" / "SST-2" / "train.tsv"))
    parser.add_argument("--bf16", default="auto", choices=["auto", "yes", "no"])
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--note", default="", help="a line for the report (e.g. what else ran on the machine)")
    parser.add_argument("--output", default=str(RESULTS / "shape_cache_cpu"))
    parser.add_argument("--setting", help=argparse.SUPPRESS)  # set in the child processes
    args = parser.parse_args()
    if not Path(args.data).is_file():
        raise SystemExit(f"no SST-2 training file at {args.data} (--data)")
    if args.setting:
        print(json.dumps(child(args)))
        return
    import torch

    from machine import cpu_name

    names = args.settings.split(",")
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        raise SystemExit(f"unknown --settings {unknown}; choose from {list(SETTINGS)}")
    rounds = []
    for rep in range(args.reps):
        order = names if rep % 2 == 0 else names[::-1]
        rnd = []
        for name in order:
            env = {**os.environ, "ONEDNN_PRIMITIVE_CACHE_CAPACITY": str(SETTINGS[name][0])}
            cmd = [sys.executable, __file__, "--setting", name, "--steps", str(args.steps), "--batch-size",
                   str(args.batch_size), "--data", args.data, "--bf16", args.bf16]
            out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
            rnd.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(rnd[-1]), flush=True)
        rounds.append(sorted(rnd, key=lambda r: names.index(r["setting"])))
    summary = {}
    for name in names:
        runs = [r for rnd in rounds for r in rnd if r["setting"] == name]
        full, slim = statistics.fmean(r["full_s"] for r in runs), statistics.fmean(r["slim_s"] for r in runs)
        summary[name] = {"full_s": full, "slim_s": slim, "ratio": statistics.fmean(r["ratio"] for r in runs),
                         "distinct_lengths": runs[0]["distinct_lengths"]}
        if SETTINGS[name][1] == "paired":
            summary[name].update({k: statistics.fmean(r[k] for r in runs)
                                  for k in ("full_pad8_s", "slim_pad8_s", "ratio_pad8")})
    result = {"command": "python " + shlex.join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
              "machine": f"{cpu_name()} ({platform.machine()})", "torch": torch.__version__, "steps": args.steps,
              "rounds": rounds, "summary": summary, "note": args.note}
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(to_markdown(result))
    print(to_markdown(result))


if __name__ == "__main__":
    main()
