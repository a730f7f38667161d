"""One training loop, on accelerate, shared by every stage: the search, slim training, full and LayerDrop baselines.

The search differs only by an extra loss term (the L1 penalty) and a per-step callback (the early-bird
tracker, which can stop the stage). Each optimizer step is timed from the moment its batch is on the device
to the end of the optimizer update (synchronised on GPUs), plus the per-step callback (the search's
bookkeeping is part of its cost); data loading is excluded, as in the paper's protocol (Sec. 4.1). Checkpoints are written atomically every `checkpoint_every` steps and hold model,
optimizer, scheduler, RNG states, data position, timings and the tracker, so a killed run resumes to the
same result.
"""

from __future__ import annotations

import contextlib
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from .data import make_loader
from .gates import decay_groups
from .runs import find_checkpoint, save_checkpoint

CHECKPOINT = "checkpoint"
# The first steps of a stage pay one-off costs (thread pools, the allocator, kernel choices for new shapes), more
# so in the first stage of a process, which would charge them to whichever stage runs first (the search, in a
# single EarlyBERT run). Every stage therefore counts its first WARMUP_STEPS steps at the mean of its other steps;
# the raw times are kept as well.
WARMUP_STEPS = 3


@dataclass
class TrainConfig:
    """One stage's optimisation settings (defaults: the paper's BERT fine-tuning baseline, Sec. 4.1)."""

    epochs: float = 3.0
    lr: float = 2e-5
    batch_size: int = 32
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0
    gate_lr: float | None = None  # learning rate of EarlyBERT's gates, when the model has them (None: `lr`)
    steps: int | None = None  # the stage's length in optimizer steps, instead of epochs (pre-training phases)
    max_steps: int | None = None  # hard cap on optimizer steps (the search's budget); the schedule still spans the stage
    checkpoint_every: int = 200  # optimizer steps between checkpoints; 0 disables them
    seed: int = 42

    def __post_init__(self):
        if self.epochs <= 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        if self.lr <= 0:
            raise ValueError(f"learning rate must be > 0, got {self.lr}")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("batch size and gradient accumulation must be >= 1")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")


class Paused(Exception):
    """Raised once a `StepBudget` is spent: the stage's checkpoint is written, a resumed run continues from it."""


class StepBudget:
    """At most `steps` optimizer steps in this call, across stages; then the run pauses (`Paused`).

    Lets a long run be cut into slices: to fit a scheduler's time limit, or to interleave two runs on one
    machine so both see the same drift in its speed (bench/pretrain.py)."""

    def __init__(self, steps: int):
        if steps < 1:
            raise ValueError(f"a step budget must be >= 1, got {steps}")
        self.left = steps

    def spend(self) -> bool:
        """Count one step; True once the budget is spent."""
        self.left -= 1
        return self.left <= 0


@dataclass
class StageResult:
    name: str
    steps: int = 0
    step_times: list[float] = field(default_factory=list)  # seconds per optimizer step, data loading excluded
    losses: list[float] = field(default_factory=list)  # task loss (without penalty) per optimizer step
    stop_reason: str = "completed"
    wall_s: float = 0.0

    @property
    def step_time_s(self) -> float:
        """Total step time with the first WARMUP_STEPS steps counted at the mean of the others (see WARMUP_STEPS)."""
        rest = self.step_times[WARMUP_STEPS:]
        if not rest:
            return self.raw_step_time_s
        return sum(rest) + (len(self.step_times) - len(rest)) * statistics.fmean(rest)

    @property
    def raw_step_time_s(self) -> float:
        return sum(self.step_times)

    def summary(self) -> dict:
        return {
            "steps": self.steps,
            "step_time_s": self.step_time_s,
            "raw_step_time_s": self.raw_step_time_s,
            "warmup_steps_at_mean": min(WARMUP_STEPS, len(self.step_times)) if self.step_times[WARMUP_STEPS:] else 0,
            "mean_step_s": self.step_time_s / max(1, self.steps),
            "median_step_s": statistics.median(self.step_times) if self.step_times else 0.0,
            "wall_s": self.wall_s,
            "stop_reason": self.stop_reason,
        }


def steps_per_epoch(num_examples: int, config: TrainConfig, num_processes: int = 1) -> int:
    batches = math.ceil(num_examples / (config.batch_size * num_processes))
    return math.ceil(batches / config.grad_accum)


def make_optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    groups = decay_groups(model, config.weight_decay, config.gate_lr)
    # fused AdamW: one kernel for all parameters, several times faster than the per-tensor loop on CPU and GPU.
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(groups, lr=config.lr, fused=fused)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepLog:
    """Per-step times and losses of a stage, read back from the device in batches.

    On GPUs a step is timed with CUDA events and its loss stays a device tensor until `flush`, every
    `GPU_FLUSH_EVERY` steps (and at checkpoints and the stage's end): the host never waits for the device inside
    a step, where a synchronise and a `.item()` per step would stall the launch queue. On CPUs the clock is read
    directly and every step is flushed at once; the numbers mean the same either way: the time between the
    batch being on the device and the end of the update (plus the search's bookkeeping), summed over
    micro-batches, data loading excluded.
    """

    GPU_FLUSH_EVERY = 50

    def __init__(self, device: torch.device, result: "StageResult", bar=None):
        self.cuda = device.type == "cuda"
        self.result, self.bar = result, bar
        self.spans: list = []  # the current step's timed spans
        self.pending: list[tuple[list, torch.Tensor]] = []  # finished steps not yet read back

    def start(self) -> None:
        self._start = self._mark()

    def stop(self) -> None:
        end = self._mark()
        self.spans.append((self._start, end) if self.cuda else end - self._start)

    def _mark(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def step_done(self, loss: torch.Tensor) -> None:
        self.pending.append((self.spans, loss))
        self.spans = []
        if not self.cuda or len(self.pending) >= self.GPU_FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        if self.cuda:
            self.pending[-1][0][-1][1].synchronize()  # the newest event done means every earlier one is
        for spans, loss in self.pending:
            seconds = sum(a.elapsed_time(b) / 1000 for a, b in spans) if self.cuda else sum(spans)
            self.result.step_times.append(seconds)
            self.result.losses.append(loss.item())
        self.pending.clear()
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{self.result.losses[-1]:.4f}")


def _stage_length(num_examples: int, config: TrainConfig, num_processes: int) -> tuple[int, int]:
    """The stage's schedule length and the steps it actually runs, both in optimizer steps."""
    per_epoch = steps_per_epoch(num_examples, config, num_processes)
    # The learning-rate schedule spans `epochs`; max_steps only cuts the stage short. The search is the start
    # of an ordinary run that stops early, so its learning rate must not decay to zero within the search.
    schedule = config.steps if config.steps is not None else math.ceil(config.epochs * per_epoch)
    total = schedule if config.max_steps is None else min(schedule, config.max_steps)
    return schedule, total


def _prepare_optimization(model: nn.Module, config: TrainConfig, accelerator, schedule: int,
                          optimizer_fn: Callable[[nn.Module], torch.optim.Optimizer] | None):
    """The model, its optimizer and a linear warm-up/decay schedule over `schedule` steps, prepared by accelerate."""
    from transformers import get_linear_schedule_with_warmup

    optimizer = optimizer_fn(model) if optimizer_fn else make_optimizer(model, config, accelerator.device)
    # accelerate steps a prepared scheduler once per process at every optimizer step (its convention for
    # schedules written for one process), so the schedule is laid out over schedule * num_processes steps.
    n = accelerator.num_processes
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * schedule) * n, schedule * n)
    return accelerator.prepare(model, optimizer, scheduler)


@dataclass
class _Position:
    """How far a stage has got: its result so far and where it is in the data. What a checkpoint resumes."""

    result: StageResult
    epoch: int = 0
    batches_done: int = 0  # micro-batches of `epoch` already trained on

    def state_dict(self, tracker) -> dict:
        """progress.json's content."""
        return {
            "result": asdict(self.result),
            "epoch": self.epoch,
            "batches_done": self.batches_done,
            "tracker": tracker.state_dict() if tracker is not None else None,
        }


def _resume(name: str, checkpoint_dir: Path | None, accelerator, tracker) -> _Position:
    """The position of the stage's latest checkpoint, with model, optimizer, scheduler, RNG and `tracker` states
    loaded from it; the start of the stage when there is none."""
    checkpoint = find_checkpoint(checkpoint_dir) if checkpoint_dir else None
    if checkpoint is None:
        return _Position(StageResult(name))
    accelerator.load_state(str(checkpoint))
    progress = json.loads((checkpoint / "progress.json").read_text())
    result = StageResult(**progress["result"])
    epoch, batches_done = progress["epoch"], progress["batches_done"]
    if tracker is not None:
        tracker.load_state_dict(progress["tracker"])
    accelerator.print(f"[{name}] resumed at step {result.steps} (epoch {epoch}, batch {batches_done})")
    return _Position(result, epoch, batches_done)


def _epoch_loader(dataset, collate_fn: Callable, config: TrainConfig, accelerator, epoch: int, batches_done: int):
    """The batches of `epoch` not yet trained on."""
    # Each epoch's order comes from its own seed, and a resumed run skips the batches already done, so it
    # sees exactly the batches (and, across processes, the same padding of the last one) as the killed run.
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(config.seed * 1000 + epoch))
    loader = accelerator.prepare(make_loader(dataset, collate_fn, config.batch_size, order.tolist()))
    if batches_done:
        loader = accelerator.skip_first_batches(loader, batches_done)
    return loader


def _check_budget(name: str, budget: StepBudget | None, checkpoint_dir: Path | None) -> None:
    """Only a stage that can resume may pause; one whose budget is already spent pauses before it starts."""
    if budget is not None and checkpoint_dir is None:
        raise ValueError("a stage can pause only with a checkpoint directory to resume from")
    if budget is not None and budget.left <= 0:
        raise Paused(name)


def _checkpoint_or_pause(name: str, spent: bool, position: _Position, tracker, config: TrainConfig, accelerator,
                         checkpoint_dir: Path | None, log: StepLog, bar) -> None:
    """After an optimizer step: a checkpoint every `checkpoint_every` steps, and one before pausing once the step
    budget is spent."""
    if spent or (checkpoint_dir and config.checkpoint_every and position.result.steps % config.checkpoint_every == 0):
        log.flush()
        save_checkpoint(accelerator, checkpoint_dir, position.state_dict(tracker))
    if spent:
        bar.close()
        raise Paused(name)


def train_stage(
    name: str,
    model: nn.Module,
    dataset,
    collate_fn: Callable,
    config: TrainConfig,
    accelerator,
    *,
    checkpoint_dir: Path | None = None,
    on_step: Callable[[int, nn.Module], bool] | None = None,
    tracker=None,
    optimizer_fn: Callable[[nn.Module], torch.optim.Optimizer] | None = None,
    budget: StepBudget | None = None,
) -> StageResult:
    """Train `model` on `dataset` (indexable; batches built by `collate_fn`) for `config.epochs` (or
    `config.max_steps`) optimizer steps, with a linear schedule over `config.epochs` after warm-up.

    optimizer_fn(model) builds the optimizer (default: AdamW, `make_optimizer`; the search's also applies the
    gates' penalty, `gates.penalize`). on_step(step, unwrapped model) runs after each optimizer step and returns True to stop the
    stage. `tracker` (with state_dict / load_state_dict) is checkpointed with the stage. Returns timings and
    losses; the model is trained in place. Once `budget` is spent the stage checkpoints and raises `Paused`.
    """
    from accelerate.utils import set_seed

    _check_budget(name, budget, checkpoint_dir)
    set_seed(config.seed)
    schedule, total = _stage_length(len(dataset), config, accelerator.num_processes)
    model, optimizer, scheduler = _prepare_optimization(model, config, accelerator, schedule, optimizer_fn)
    raw_model = accelerator.unwrap_model(model)
    position = _resume(name, checkpoint_dir, accelerator, tracker)
    result = position.result

    model.train()
    wall_start = time.perf_counter() - result.wall_s
    bar = tqdm(total=total, initial=result.steps, desc=name, disable=not accelerator.is_local_main_process)
    log, micro_losses = StepLog(accelerator.device, result, bar), []
    while result.steps < total and result.stop_reason == "completed":
        for batch in _epoch_loader(dataset, collate_fn, config, accelerator, position.epoch, position.batches_done):
            log.start()
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            log.stop()
            micro_losses.append(loss.detach().float())
            position.batches_done += 1
            if not accelerator.sync_gradients:
                continue
            result.steps += 1
            # on_step is the search's bookkeeping (draw the would-be ticket, test the early-bird rule): part of
            # the search's cost, so inside its measured time.
            if on_step is not None:
                log.start()
                if on_step(result.steps, raw_model):
                    result.stop_reason = getattr(tracker, "stop_reason", None) or "stopped"
                log.stop()
            # the step's loss over all processes (each logs the same number), not rank 0's share of the batch
            log.step_done(accelerator.reduce(torch.stack(micro_losses).mean(), reduction="mean"))
            micro_losses = []
            bar.update(1)
            result.wall_s = time.perf_counter() - wall_start
            spent = budget is not None and budget.spend()
            if result.steps >= total or result.stop_reason != "completed":
                break
            _checkpoint_or_pause(name, spent, position, tracker, config, accelerator, checkpoint_dir, log, bar)
        else:
            position.epoch, position.batches_done = position.epoch + 1, 0
    log.flush()
    bar.close()
    result.wall_s = time.perf_counter() - wall_start
    accelerator.print(f"[{name}] {result.steps} steps, {result.step_time_s:.1f}s of step time, stop: {result.stop_reason}")
    return result


def step_time_ratio(slim: nn.Module, full: nn.Module, dataset, collate_fn: Callable, config: TrainConfig,
                    accelerator, pairs: int = 15, batches: int = 5) -> dict:
    """Training-step time of `slim` over that of `full` (forward, backward, optimizer), measured on copies of
    both, on the same real batches, interleaved ABBA so drift in the machine's speed falls on both alike. A
    single run's estimate of the full model's time comes from this ratio and its own measured steps: timing plain
    full steps, not the search's gated ones, which also carry the penalty and the ticket bookkeeping.

    The pairs cycle over `batches` fixed batches that both arms first run once untimed: a batch shape a model has
    not seen costs extra on its first step (on a GPU, kernel selection for every new matrix shape), and a slim
    model fresh from pruning has seen none, while the full model has seen many in the search: timing a new batch
    per pair measured that warm-up, 5-6x the slim step, instead of the step. Each arm's step time is the mean over
    the batches of each batch's median step (`batch_mean_of_medians`), so every batch needs several pairs: three at
    the defaults."""
    import copy

    arms = []
    for model in (full, slim):
        model = copy.deepcopy(accelerator.unwrap_model(model)).to(accelerator.device).train()
        arms.append((model, make_optimizer(model, config, accelerator.device)))
    fixed = [{k: v.to(accelerator.device) for k, v in batch.items()} for batch in
             representative_batches(dataset, collate_fn, config.batch_size, max(1, min(batches, pairs)), config.seed)]

    def step(arm: int, batch: dict) -> float:
        model, optimizer = arms[arm]
        return timed_step(model, optimizer, batch, config.max_grad_norm, accelerator.device, accelerator.autocast)

    for batch in fixed:
        step(0, batch), step(1, batch)
    times = ([[] for _ in fixed], [[] for _ in fixed])  # per arm, per batch
    for i in range(pairs):
        for arm in ((0, 1) if i % 2 == 0 else (1, 0)):
            times[arm][i % len(fixed)].append(step(arm, fixed[i % len(fixed)]))
    full_s, slim_s = batch_mean_of_medians(times[0]), batch_mean_of_medians(times[1])
    return {"full_mean_step_s": full_s, "slim_mean_step_s": slim_s, "ratio": slim_s / full_s, "pairs": pairs,
            "batches": len(fixed)}


def timed_step(model: nn.Module, optimizer, batch: dict, max_grad_norm: float | None = None,
               device: torch.device | None = None, autocast: Callable | None = None) -> float:
    """Seconds of one training step (forward, backward, clipping, optimizer step), the device synchronized on both
    ends: what step-time measurements time, here and in the benchmarks, so that their arms match a training step."""
    device = device or torch.device("cpu")
    _synchronize(device)
    begin = time.perf_counter()
    with autocast() if autocast is not None else contextlib.nullcontext():
        loss = model(**batch).loss
    loss.backward()
    if max_grad_norm:  # as the training step does: a norm over every parameter, the same in every arm
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    _synchronize(device)
    return time.perf_counter() - begin


def batch_mean_of_medians(times_by_batch: list[list[float]]) -> float:
    """The mean over batches of each batch's median step time. A step slowed by something else on the machine
    (another process's burst, a page fault) is one sample of several and drops out, where a mean over all steps
    kept it: with means, a single run's estimate of the time saved strayed from the measured saving by 4-5 points
    on a shared machine. The mean over batches keeps the spread of their sizes (representative_batches)."""
    return statistics.fmean(statistics.median(t) for t in times_by_batch if t)


def representative_batches(dataset, collate_fn: Callable, batch_size: int, count: int, seed: int,
                           candidates: int = 8) -> list[dict]:
    """`count` batches of the data as training cuts it, at evenly spaced quantiles of their padded size.

    A step's cost, and the slim / full ratio with it, depends on the batch's padded length (short batches leave
    more of the step to the costs a ticket does not shrink). The first few batches of the order can be far from
    training's on average: padded lengths 60 against an epoch's 70 on STS-B, 111 against 104 on QNLI (where
    the calibration said 0.679 and training ran at 0.749). One batch from the middle of each of `count` equal shares of `count x candidates`
    batches, ordered by padded size, stands for the whole spread (the midpoint rule)."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    chunks = [order[i : i + batch_size] for i in range(0, max(1, len(dataset) - batch_size + 1), batch_size)]
    pool = [collate_fn([dataset[j] for j in chunk]) for chunk in chunks[: count * candidates]]
    pool.sort(key=lambda batch: max(v.numel() for v in batch.values() if torch.is_tensor(v)))
    return [pool[min(len(pool) - 1, int((k + 0.5) * len(pool) / count))] for k in range(count)]


@torch.no_grad()
def predict(model: nn.Module, features, collate_fn: Callable, batch_size: int, accelerator,
            keys: tuple[str, ...] = ("logits",)) -> dict[str, torch.Tensor]:
    """Model outputs `keys` (and "labels" when the batches have them) over `features`, in order, gathered
    across processes (gather_for_metrics drops the duplicates of uneven sharding)."""
    loader = accelerator.prepare(make_loader(features, collate_fn, batch_size))
    model.eval()
    collected: dict[str, list[torch.Tensor]] = {}
    for batch in loader:
        labels = batch.pop("labels", None)
        out = model(**batch)
        tensors = {k: out[k].float() for k in keys}
        if labels is not None:
            tensors["labels"] = labels
        for k, v in accelerator.gather_for_metrics(tensors).items():
            collected.setdefault(k, []).append(v.cpu())
    model.train()
    return {k: torch.cat(v) for k, v in collected.items()}
