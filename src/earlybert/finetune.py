"""Efficient fine-tuning end to end (paper Sec. 3.2, 4.1, 4.2): search -> draw -> slim training -> evaluation.

`finetune(config)` runs one method into one run folder:
  full       the baseline: the whole model, `epochs` epochs at `lr`;
  earlybert  gates + L1 search from the pretrained weights, stopped by the early bird or the budget; draw;
             the slim model restarts from the pretrained weights (same task-head init as the search) and trains
             `earlybert_epochs` epochs at `lr * lr_scale`;
  random     a ticket of the same shape drawn at random, trained like earlybert, no search;
  layerdrop  LayerDrop training for `epochs` epochs, then one third of the layers removed.
Every stage is timed per optimizer step, data loading excluded; EarlyBERT's time includes its search.

`search_only(config)` runs EarlyBERT's search stage alone and keeps the gates' final coefficients; an earlybert
run with `search_from` set draws its ticket at its own ratios from them instead of searching (the trade-off
sweep: one search, many tickets), and is charged that search's time.
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .archs import config_layer_shapes, layer_shapes
from .data import padding_collator
from .flops import count_flops
from .gates import GATES_ATTR, GateConfig
from .layerdrop import add_layerdrop, drop_every_third_layer, remove_layerdrop
from .prune import check_ticket_fits, prune
from .runs import RunFolder, WallClock, atomic_write_bytes, fingerprint, remove_checkpoint
from .search import EARLY_BIRD_WINDOW, SearchConfig, run_search
from .ticket import Ticket, TicketConfig, draw_ticket, random_scores_ticket, random_ticket
from .train import Paused, StepBudget, TrainConfig, step_time_ratio, steps_per_epoch, train_stage

logger = logging.getLogger(__name__)

METHODS = ("full", "earlybert", "random", "layerdrop")
# The loss the search stage minimises (with the gates' L1): the task's, or the masked-LM loss on the task's own
# training text through the checkpoint's MLM head (paper App. B); the slim model then trains on the task either way.
SEARCH_OBJECTIVES = ("task", "mlm")


@dataclass
class FinetuneConfig:
    """A whole run. Defaults are the paper's GLUE settings; `squad` switches to its own (see resolve_defaults)."""

    model: str
    output: str
    task: str | None = None  # a GLUE task name or "squad"; None with train_file/validation_file: custom data
    method: str = "earlybert"
    data: str | None = None  # local folder (GLUE layout or SQuAD JSON files) or a hub dataset name
    train_file: str | None = None
    validation_file: str | None = None
    text_columns: tuple[str, ...] = ()
    label_column: str = "label"
    regression: bool = False
    max_length: int | None = None  # 128 for GLUE, 384 for SQuAD
    # Classification batches are padded to their longest sequence (None), or to the next multiple of this: fewer
    # shapes (tensor cores want multiples of 8), more padded tokens. Off: on a Xeon CPU it made both steps ~5%
    # slower (bench/results/shape_cache_cpu_xeon_paired.md); a run with it is not bit-identical to one without.
    pad_to_multiple_of: int | None = None
    doc_stride: int = 128
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    epochs: float | None = None  # baseline epochs: 3 for GLUE, 2 for SQuAD
    lr: float | None = None  # baseline learning rate: 2e-5 for GLUE, 3e-5 for SQuAD
    earlybert_epochs: float | None = None  # slim training: 2 for GLUE, SQuAD keeps its default (Sec. 4.2)
    lr_scale: float | None = None  # slim training lr multiplier: 2 for GLUE, 1 for SQuAD
    batch_size: int = 32
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    grad_accum: int = 1
    seed: int = 42
    search_epoch_fraction: float = 0.2
    search_max_steps: int | None = None
    gates: GateConfig = field(default_factory=GateConfig)
    ticket: TicketConfig = field(default_factory=TicketConfig)
    epsilon: float = SearchConfig.epsilon  # the early-bird rule (see SearchConfig)
    patience: int = SearchConfig.patience
    window: float = EARLY_BIRD_WINDOW  # early-bird window, a share of the search budget (0: the paper's rule)
    record_every: int | None = None  # record a mask every N search steps; default: budget / 40, at least 1
    ticket_like: str | None = None  # random method: copy the per-layer shape of this ticket.json
    layerdrop: float = 1 / 3
    checkpoint_every: int = 200
    mixed_precision: str | None = None  # "no", "bf16", "fp16"; default bf16 on GPUs, no on CPU
    # earlybert: a folder where `search_only` ran (relative paths are taken from this run's folder, so a sweep
    # moved as a whole still resumes); the ticket is drawn at `ticket`'s ratios from the coefficients saved there
    search_from: str | None = None
    # Used wherever this config runs a search (earlybert, search_only); the other methods have none to steer.
    search_objective: str = "task"

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        if self.search_objective not in SEARCH_OBJECTIVES:
            raise ValueError(f"unknown search objective {self.search_objective!r} (--search-objective): choose "
                             f"{' or '.join(SEARCH_OBJECTIVES)}")
        if self.search_from is not None and self.method != "earlybert":
            raise ValueError(f"search_from draws an earlybert ticket; the {self.method} method has none")
        if isinstance(self.gates, dict):
            self.gates = GateConfig(**self.gates)
        if isinstance(self.ticket, dict):
            self.ticket = TicketConfig(**self.ticket)
        self.text_columns = tuple(self.text_columns)
        is_squad = self.task == "squad"
        defaults = {"max_length": 384 if is_squad else 128, "epochs": 2.0 if is_squad else 3.0,
                    "lr": 3e-5 if is_squad else 2e-5, "lr_scale": 1.0 if is_squad else 2.0}
        for name, value in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.earlybert_epochs is None:  # SQuAD keeps its default epochs (Sec. 4.2)
            self.earlybert_epochs = self.epochs if is_squad else 2.0
        # Everything that can be checked without data is checked here, before a run folder is touched.
        for name in ("lr_scale", "search_epoch_fraction"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of (--pad-to-multiple-of) must be >= 1, got {self.pad_to_multiple_of}")
        for name, low in (("max_length", 8), ("doc_stride", 1), ("max_train_samples", 1), ("max_eval_samples", 1),
                          ("search_max_steps", 1), ("checkpoint_every", 0)):
            value = getattr(self, name)
            if value is not None and value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        if is_squad and self.doc_stride >= self.max_length:
            raise ValueError(f"doc stride {self.doc_stride} must be smaller than max length {self.max_length}")
        if not 0 <= self.layerdrop < 1:
            raise ValueError(f"LayerDrop rate must be in [0, 1), got {self.layerdrop}")
        self.train_config(slim=False), self.train_config(slim=True)  # validates epochs, lr, batch, accumulation
        SearchConfig(epsilon=self.epsilon, patience=self.patience, window=self.window, max_steps=1,
                     record_every=self.record_every or 1)

    def to_dict(self) -> dict:
        data = asdict(self)
        if data["search_from"] is None:  # runs begun before the field existed resume: their config.json lacks it
            del data["search_from"]
        if data["search_objective"] == FinetuneConfig.search_objective:  # likewise for runs begun before the MLM objective existed
            del data["search_objective"]
        return data

    def epochs_trained(self) -> float:
        """Epochs of the training data this method's run goes through: its training, and EarlyBERT's own search at
        its budget (the early bird may stop it sooner; a search read from search_from costs this run nothing)."""
        if self.method not in _TICKET_METHODS:
            return self.epochs
        search = self.search_epoch_fraction if self.method == "earlybert" and not self.search_from else 0.0
        return self.earlybert_epochs + search

    @property
    def searches_with_mlm(self) -> bool:
        """This run's own search (not one read from search_from) minimises the masked-LM loss."""
        return self.search_objective == "mlm" and self.method == "earlybert" and not self.search_from

    def search_folder(self) -> Path:
        # normalised as text: the run folder in "RUN/../search" may not exist yet, and the OS would not pass through it
        return Path(os.path.normpath(Path(self.output) / self.search_from))

    def train_config(self, slim: bool) -> TrainConfig:
        return TrainConfig(
            epochs=self.earlybert_epochs if slim else self.epochs,
            lr=self.lr * (self.lr_scale if slim else 1.0),
            batch_size=self.batch_size,
            weight_decay=self.weight_decay,
            warmup_ratio=self.warmup_ratio,
            grad_accum=self.grad_accum,
            checkpoint_every=self.checkpoint_every,
            seed=self.seed,
        )


def _seeded_model(config: FinetuneConfig, task_info):
    """The pretrained encoder with a task head; re-seeded so every load gets the same head initialisation."""
    from accelerate.utils import set_seed

    from .tasks import load_model_for

    set_seed(config.seed)
    return load_model_for(config.model, task_info)


def _ticket_for_random(model, config: FinetuneConfig) -> Ticket:
    """The random baseline: EarlyBERT's per-layer shape when --ticket-like gives it, else the configured ratios."""
    if config.ticket_like:
        return random_ticket(Ticket.load(config.ticket_like), config.seed)
    return random_scores_ticket(*layer_shapes(model), config.ticket, config.seed)


def _linear_flops_per_step(model, task_info, config: FinetuneConfig) -> int:
    """Linear-layer FLOPs of one training step on a representative batch (mean training length)."""
    length = max(8, min(config.max_length, int(round(task_info.mean_train_length))))
    vocab = model.get_input_embeddings().num_embeddings
    generator = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(5, vocab, (config.batch_size, length), generator=generator)}
    device = next(model.parameters()).device
    return count_flops(model, {k: v.to(device) for k, v in batch.items()})["linear"]


def _data_name(config: FinetuneConfig, task_info) -> str:
    """What the run was trained on, for titles: the task, or the user's own files by name (not "custom")."""
    if config.train_file:
        return f"{Path(config.train_file).name} / {Path(config.validation_file).name}"
    return task_info.name


def _weights_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.suffix in (".safetensors", ".bin"))


INFERENCE_BATCHES = 4  # evaluation batches timed per repetition
INFERENCE_REPETITIONS = 5


@torch.inference_mode()
def trained_vs_full(config: FinetuneConfig, task_info, trained, model_dir: Path, accelerator) -> dict:
    """What the user got: parameters, size on disk and inference time per evaluation batch, trained model against
    the full pretrained one with the same head (same data, batch size, device and precision).

    The two models run in turns (trained, full, then full, trained, ...) so that a machine's drift (other jobs,
    clocks, caches) falls on both alike; the medians over the repetitions are compared."""
    import tempfile

    full = _seeded_model(config, task_info).to(accelerator.device).eval()
    with tempfile.TemporaryDirectory() as tmp:
        full.save_pretrained(tmp)
        full_bytes = _weights_bytes(Path(tmp))
    was_training = trained.training
    trained.eval()
    features = next(iter(task_info.eval_features.values()))
    collate = padding_collator(task_info.tokenizer, config.max_length) if task_info.is_squad else task_info.collator()
    size = config.batch_size
    batches = [{k: v.to(accelerator.device) for k, v in collate(features[i:i + size]).items() if k != "labels"}
               for i in range(0, min(len(features), INFERENCE_BATCHES * size), size)]
    models = {"trained": trained, "full": full}
    seconds = {name: [] for name in models}

    def run(model) -> float:
        start = time.perf_counter()
        with accelerator.autocast():
            for batch in batches:
                model(**batch)
        if accelerator.device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / len(batches)

    for model in models.values():  # warm-up: first calls pay for allocation and kernel selection
        run(model)
    for repetition in range(INFERENCE_REPETITIONS):
        for name in (("trained", "full") if repetition % 2 == 0 else ("full", "trained")):
            seconds[name].append(run(models[name]))
    trained.train(was_training)
    per_batch = {name: statistics.median(values) for name, values in seconds.items()}
    counts = {"trained": sum(p.numel() for p in trained.parameters()), "full": sum(p.numel() for p in full.parameters())}
    disk = {"trained": _weights_bytes(model_dir), "full": full_bytes}
    del full
    return {
        "parameters": {**counts, "ratio": counts["trained"] / counts["full"]},
        "size_on_disk_bytes": {**disk, "ratio": disk["trained"] / disk["full"]},
        "inference_s_per_batch": {**per_batch, "ratio": per_batch["trained"] / per_batch["full"],
                                  "batches": len(batches), "batch_size": size, "repetitions": INFERENCE_REPETITIONS,
                                  "device": str(accelerator.device), "per_repetition": seconds},
    }


_TICKET_METHODS = ("earlybert", "random")  # the methods that train a slim model pruned to a ticket


def _accelerator_factory(config: FinetuneConfig) -> Callable:
    """A maker of accelerators with the run's precision, accumulation and DDP settings: one per stage."""
    from accelerate import Accelerator, DistributedDataParallelKwargs

    mixed = config.mixed_precision or ("bf16" if torch.cuda.is_available() else "no")
    ddp_kwargs = DistributedDataParallelKwargs(find_unused_parameters=config.method == "layerdrop")

    def new_accelerator():
        # cpu=True without a GPU: accelerate then runs torchrun / `accelerate launch` processes as a gloo group
        # (MULTI_CPU) instead of treating each as a lone process.
        return Accelerator(mixed_precision=mixed, gradient_accumulation_steps=config.grad_accum,
                           kwargs_handlers=[ddp_kwargs], cpu=not torch.cuda.is_available())

    return new_accelerator


def _check_ticket_can_be_drawn(config: FinetuneConfig, task_info) -> None:
    """Impossible ratios for this model's shape (or a --ticket-like ticket of another shape) fail now, not mid-run."""
    heads, ffn = config_layer_shapes(task_info.model_config)
    draw_ticket([torch.ones(n) for n in heads], [torch.ones(n) for n in ffn], config.ticket)
    if config.ticket_like:
        check_ticket_fits(task_info.model_config, Ticket.load(config.ticket_like))
    if config.search_from:
        check_ticket_fits(task_info.model_config, _shared_ticket(config))
    if config.searches_with_mlm:  # a checkpoint without MLM head fails here, before the run folder is written
        from .tasks import load_masked_lm

        load_masked_lm(config.model)


def _start_run(folder: RunFolder, config: FinetuneConfig, accelerator) -> WallClock:
    """Create the run folder, start its wall clock and record the configuration."""
    accelerator.wait_for_everyone()
    folder.create()
    accelerator.wait_for_everyone()
    clock = WallClock(folder).begin()
    folder.write_json("config.json", config.to_dict())
    logger.info("configuration: %s", json.dumps(config.to_dict()))
    return clock


@dataclass
class _Run:
    """What every stage of one run shares."""

    config: FinetuneConfig
    task_info: object
    folder: RunFolder
    accelerator: object  # the run's own, for what spans stages (ticket broadcast, saving, barriers)
    new_accelerator: Callable  # a fresh accelerator for each stage
    clock: WallClock
    budget: StepBudget | None = None  # this call's steps (finetune's stop_after): the stages pause once it is spent


def _open_run(config: FinetuneConfig, resume: bool, overwrite: bool) -> _Run | dict:
    """The run, with its data read and checked before anything is written; or, for --resume of a run that has
    finished, its results."""
    from .tasks import prepare_task

    new_accelerator = _accelerator_factory(config)
    accelerator = new_accelerator()
    folder = RunFolder(config.output, resume, overwrite, accelerator.is_main_process)
    finished = folder.check_resume(config.to_dict()) if resume else None
    if finished is not None:
        return finished
    task_info = prepare_task(config)  # data, tokenizer, features: bad input fails here, before anything is written
    if config.method in _TICKET_METHODS:
        _check_ticket_can_be_drawn(config, task_info)
    # the examples as the model sees them (token ids, labels), training and evaluation, whatever they came from
    data = fingerprint(task_info.train_features, *task_info.eval_features.values())
    source = _data_source(config)
    if resume:
        folder.check_data(data, source)
    clock = _start_run(folder, config, accelerator)
    folder.keep_data(data, source)
    return _Run(config, task_info, folder, accelerator, new_accelerator, clock)


def _data_source(config: FinetuneConfig) -> str:
    """Where a run's examples come from, in the flags' words (for the message of a changed-data resume)."""
    if config.train_file:
        return f"--train-file {config.train_file} / --validation-file {config.validation_file}"
    return f"--task {config.task}" + (f" --data {config.data}" if config.data else "")


@dataclass
class _Prepared:
    """The model a method trains, and what preparing it produced."""

    model: nn.Module
    ticket: Ticket | None = None
    history: dict | None = None  # EarlyBERT's recorded masks (mask_history.json)
    stages: dict[str, dict] = field(default_factory=dict)  # stages before training: EarlyBERT's search
    losses: dict[str, list[float]] = field(default_factory=dict)


def _prepare_full(run: _Run, model: nn.Module) -> _Prepared:
    return _Prepared(model)


def _search(run: _Run, model: nn.Module, pause: StepBudget | None = None) -> tuple[Ticket, dict]:
    """The search stage: gates + L1 from the pretrained weights, stopped by the early bird or the budget; a step
    budget `pause` pauses it (train.Paused), to be resumed from its checkpoint."""
    config, task_info = run.config, run.task_info
    base = config.train_config(slim=False)
    per_epoch = steps_per_epoch(len(task_info.train_features), base, run.accelerator.num_processes)
    budget = SearchConfig(max_steps=config.search_max_steps, max_epoch_fraction=config.search_epoch_fraction,
                          steps_per_epoch=per_epoch).budget
    search_cfg = SearchConfig(epsilon=config.epsilon, patience=config.patience, window=config.window,
                              max_steps=budget, record_every=config.record_every or max(1, budget // 40))
    search_train = TrainConfig(**{**asdict(base), "max_steps": budget,
                                  "gate_lr": config.gates.learning_rate(config.lr)})
    dataset, collate, wrap = task_info.train_features, task_info.collator(), None
    if config.searches_with_mlm:
        model, dataset, collate, wrap = _mlm_search_inputs(config, task_info)
    return run_search(model, dataset, collate, search_train, search_cfg, config.ticket, config.gates, run.accelerator,
                      run.new_accelerator(), run.folder, wrap=wrap, budget=pause)


def _mlm_search_inputs(config: FinetuneConfig, task_info) -> tuple:
    """What an MLM-objective search trains (paper App. B): the checkpoint's own masked-LM model, whose encoder is the
    task model's, so its gates map one to one onto the task model's heads and neurons; the task's training text,
    masked as in pre-training (masks fixed by the seed and the batch, so a resumed search sees the same ones); and
    pre-training's loss module. (model, dataset, collator, wrap) for run_search."""
    from accelerate.utils import set_seed

    from .mlm_data import SeededMLMCollator
    from .pretrain import MaskedLM
    from .tasks import load_masked_lm

    set_seed(config.seed)
    model = load_masked_lm(config.model)
    # Only the token ids: labels are the masked tokens now, and the collator pads and builds the attention mask.
    texts = [{"input_ids": torch.as_tensor(f["input_ids"]), "index": i} for i, f in enumerate(task_info.train_features)]
    return model, texts, SeededMLMCollator(task_info.tokenizer, config.seed), MaskedLM


CALIBRATION = "step_time_ratio.json"  # a ticket run's paired slim / full step-time ratio (see _calibration)
COEFFICIENTS = "coefficients.safetensors"  # a search's final gate coefficients: a ticket at any ratio is a cut of them


def save_coefficients(path: str | Path, head_scores, ffn_scores, step: int | None) -> None:
    """Coefficients as float32 tensors head.<layer> and ffn.<layer>, written atomically. safetensors keeps them bit
    for bit, so a ticket drawn from the file is the ticket drawn from the gates."""
    from safetensors.torch import save

    tensors = {f"{kind}.{layer}": torch.as_tensor(s, dtype=torch.float32).detach().cpu().contiguous()
               for kind, scores in (("head", head_scores), ("ffn", ffn_scores)) for layer, s in enumerate(scores)}
    atomic_write_bytes(Path(path), save(tensors, metadata={"step": "" if step is None else str(step)}))


def load_coefficients(path: str | Path) -> tuple[list[torch.Tensor], list[torch.Tensor], int | None]:
    """(head scores per layer, FFN scores per layer, the search step they were saved at)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        names, step = list(f.keys()), (f.metadata() or {}).get("step")
        layers = {kind: sum(name.startswith(f"{kind}.") for name in names) for kind in ("head", "ffn")}
        scores = {kind: [f.get_tensor(f"{kind}.{layer}") for layer in range(n)] for kind, n in layers.items()}
    return scores["head"], scores["ffn"], int(step) if step else None


def _shared_ticket(config: FinetuneConfig) -> Ticket:
    """The ticket at this run's ratios, drawn from the coefficients `search_only` saved in `search_from`."""
    path = config.search_folder() / COEFFICIENTS
    if not path.is_file():
        raise ValueError(f"search_from {config.search_from}: no finished search there ({path} is missing)")
    heads, ffn, step = load_coefficients(path)
    return draw_ticket(heads, ffn, config.ticket, step=step)


# Measured on an H100 (bench/results/gpu_h100.md): BERT-base's slim model with FFN widths of any size trained
# 1.38x SLOWER than the full model at a batch that fills the card (its matrix products fall off the tensor-core
# kernels), and 0.80x with the widths rounded to 64. The ticket is not rounded by default, so that one seed draws
# one ticket on every device; the user is told instead.
GPU_FFN_MULTIPLE = 64


def warn_if_unaligned(ticket: Ticket, device: torch.device) -> bool:
    """Log a warning (and return True) when a slim model is trained on a GPU with FFN widths that are not
    multiples of `GPU_FFN_MULTIPLE`."""
    odd = [width for width in ticket.kept_ffn if width % GPU_FFN_MULTIPLE]
    if device.type != "cuda" or not odd:
        return False
    logger.warning("%d of %d layers keep an FFN width that is not a multiple of %d (e.g. %d): on a GPU such a slim "
                   "model can train slower than the full one; draw with --ffn-multiple %d (TicketConfig(ffn_multiple"
                   "=%d))", len(odd), len(ticket.kept_ffn), GPU_FFN_MULTIPLE, odd[0], GPU_FFN_MULTIPLE,
                   GPU_FFN_MULTIPLE)
    return True


def _prepare_earlybert(run: _Run, model: nn.Module) -> _Prepared:
    """Search (or, with `search_from`, a finished search's coefficients), draw the ticket, prune a fresh model."""
    config, task_info = run.config, run.task_info
    if config.search_from:
        ticket = _shared_ticket(config)
        search_done, history = (json.loads((config.search_folder() / name).read_text())
                                for name in ("search.json", "mask_history.json"))
        run.folder.write_json("ticket.json", ticket.to_dict())
    else:
        ticket, search_done = _search(run, model, run.budget)
        history = run.folder.read_json("mask_history.json")
    logger.info("stage: draw -> %s", ticket.summary())
    warn_if_unaligned(ticket, run.accelerator.device)
    model = _seeded_model(config, task_info)  # restart from the pretrained weights, same head init
    prune(model, ticket)
    # A shared search is charged in full: its steps and time count as this run's own.
    return _Prepared(model, ticket, history, {"search": search_done["stage"]}, {"search": search_done["losses"]})


def _prepare_random(run: _Run, model: nn.Module) -> _Prepared:
    ticket = _ticket_for_random(model, run.config)
    run.folder.write_json("ticket.json", ticket.to_dict())
    logger.info("stage: random ticket -> %s", ticket.summary())
    warn_if_unaligned(ticket, run.accelerator.device)
    prune(model, ticket)
    return _Prepared(model, ticket)


def _prepare_layerdrop(run: _Run, model: nn.Module) -> _Prepared:
    add_layerdrop(model, run.config.layerdrop)
    return _Prepared(model)


_PREPARE = {"full": _prepare_full, "earlybert": _prepare_earlybert, "random": _prepare_random,
            "layerdrop": _prepare_layerdrop}


def _remove_layerdrop_layers(model: nn.Module) -> None:
    remove_layerdrop(model)
    kept_layers = drop_every_third_layer(model)
    logger.info("stage: LayerDrop pruning kept layers %s", kept_layers)


def _calibration(run: _Run, model: nn.Module, train_cfg: TrainConfig) -> dict:
    """What the full model's steps would have cost, for a run that has no full arm: the paired step-time ratio of
    the slim `model` and a fresh full one (train.step_time_ratio). Measured once, before training, and kept in the
    run folder: a run resumed after a pause or a kill reuses it instead of measuring a model already trained."""
    calibration = run.folder.read_json(CALIBRATION)
    if calibration is None:
        calibration = step_time_ratio(model, _seeded_model(run.config, run.task_info), run.task_info.train_features,
                                      run.task_info.collator(), train_cfg, run.accelerator)
        run.folder.write_json(CALIBRATION, calibration)
    return calibration


def _estimated_full_step_s(method: str, stages: dict[str, dict], calibration: dict | None, full_steps: int,
                           total_step_s: float) -> float | None:
    """The full baseline's step time: measured in a full run, else estimated from the paired calibration."""
    if method == "full":
        return total_step_s
    if calibration is None:
        return None
    # Without a measured full run: the trained model's mean step over the paired slim / full step-time ratio.
    return stages["train"]["mean_step_s"] / calibration["ratio"] * full_steps


def _flops_saved(method: str, stages: dict[str, dict], full_steps: int, flops: dict[str, int]) -> float | None:
    """The share of the full baseline's linear FLOPs that a ticket method's search and slim training did not spend."""
    if method not in _TICKET_METHODS:
        return None
    search_steps = stages.get("search", {}).get("steps", 0)
    full_flops, slim_flops = flops["full"], flops["trained_model"]
    return 1 - (search_steps * full_flops + stages["train"]["steps"] * slim_flops) / (full_steps * full_flops)


def _write_outputs(run: _Run, results: dict, prepared: _Prepared) -> None:
    """The trained model and tokenizer, its comparison with the full model, the report and results.json."""
    from . import report

    config, task_info, folder, accelerator = run.config, run.task_info, run.folder, run.accelerator
    if accelerator.is_main_process:
        model_dir = folder.path / "model"
        accelerator.unwrap_model(prepared.model).save_pretrained(model_dir)
        task_info.tokenizer.save_pretrained(model_dir)
        results["trained_vs_full"] = trained_vs_full(config, task_info, accelerator.unwrap_model(prepared.model),
                                                     model_dir, accelerator)
    results["wall_time_s"] = run.clock.stop()
    if accelerator.is_main_process:
        report.write_run_report(folder.path, config, results, prepared.ticket, prepared.history, results["losses"])
        if config.method == "earlybert":  # where a searched ticket pruned, to compare the two search objectives
            # a shared search's objective is the one its own run recorded (config.json omits the default)
            searched = json.loads((config.search_folder() / "config.json").read_text()) if config.search_from else {}
            objective = searched.get("search_objective", FinetuneConfig.search_objective) if config.search_from else config.search_objective
            report.append_report_lines(folder.path, report.search_by_layer_lines(prepared.ticket, prepared.history,
                                                                                 objective))
        folder.write_json("results.json", results)  # last: its presence marks the run finished (check_resume)
    remove_checkpoint(folder.path / "train_checkpoint", accelerator)  # only now: results are safely on disk
    accelerator.wait_for_everyone()


def finetune(config: FinetuneConfig, resume: bool = False, overwrite: bool = False,
             stop_after: int | None = None) -> dict | None:
    """Run one method end to end into `config.output`; returns results.json's content.

    stop_after: run at most this many optimizer steps (search and training together) in this call, then checkpoint
    and return None; calling again with resume=True continues exactly where it stopped. `compare` interleaves the
    methods of one seed this way, a turn at a time, so that a drift in the machine's speed falls on all of them."""
    from .tasks import evaluate_model

    budget = StepBudget(stop_after) if stop_after is not None else None  # checked before anything is written
    run = _open_run(config, resume, overwrite)
    if isinstance(run, dict):
        return run
    run.budget = budget
    task_info, folder, accelerator, new_accelerator = run.task_info, run.folder, run.accelerator, run.new_accelerator
    train_cfg = config.train_config(slim=config.method in _TICKET_METHODS)
    full_steps = math.ceil(config.epochs * steps_per_epoch(len(task_info.train_features), config.train_config(False),
                                                           accelerator.num_processes))

    model = _seeded_model(config, task_info)
    full_flops = _linear_flops_per_step(model, task_info, config)
    try:
        prepared = _PREPARE[config.method](run, model)
        model, ticket = prepared.model, prepared.ticket
        flops = {"full": full_flops,
                 "trained_model": _linear_flops_per_step(model, task_info, config) if ticket is not None else full_flops}
        calibration = _calibration(run, model, train_cfg) if ticket is not None else None
        logger.info("stage: train (%s)", config.method)
        result = train_stage("train", model, task_info.train_features, task_info.collator(),
                             train_cfg, new_accelerator(), checkpoint_dir=folder.path / "train_checkpoint",
                             budget=budget)
    except Paused as paused:
        logger.info("paused in %s after %d steps; resume to continue", paused, stop_after)
        run.clock.stop()
        accelerator.wait_for_everyone()
        return None
    stages, losses = {**prepared.stages, "train": result.summary()}, {**prepared.losses, "train": result.losses}
    if config.method == "layerdrop":
        _remove_layerdrop_layers(model)

    logger.info("stage: evaluate")
    metrics = evaluate_model(model, task_info, config, new_accelerator())
    total_step_s = sum(s["step_time_s"] for s in stages.values())
    full_estimate = _estimated_full_step_s(config.method, stages, calibration, full_steps, total_step_s)
    results = {
        "method": config.method,
        "task": task_info.name,
        "seed": config.seed,
        "metrics": metrics,
        "score": metrics[task_info.headline],
        "headline_metric": task_info.headline,
        "stages": stages,
        "total_step_time_s": total_step_s,
        "wall_time_s": run.clock.total_s(),
        "full_run_steps": full_steps,
        "estimated_full_step_time_s": full_estimate,
        "fraction_saved_vs_estimated_full": None if not full_estimate else 1 - total_step_s / full_estimate,
        "paired_step_time_ratio": calibration,
        "theoretical_fraction_saved_flops": _flops_saved(config.method, stages, full_steps, flops),
        "linear_flops_per_step": flops,
        "losses": losses,  # per optimizer step of every stage
        "parameters": sum(p.numel() for p in model.parameters()),
        "ticket": None if ticket is None else {"kept_heads": ticket.kept_heads, "kept_ffn": ticket.kept_ffn},
        "data": _data_name(config, task_info),
    }
    _write_outputs(run, results, prepared)
    logger.info("done: %s %s = %.2f; step time %.1fs", config.method, task_info.headline, results["score"], total_step_s)
    return results


def search_only(config: FinetuneConfig, resume: bool = False, overwrite: bool = False,
                budget: StepBudget | None = None, on_pause: Callable | None = None) -> dict:
    """EarlyBERT's search stage alone, exactly as `finetune` runs it, into `config.output`: search.json,
    mask_history.json, ticket.json (at `config.ticket`'s ratios, the ones the early-bird rule watched) and the gates'
    final coefficients (COEFFICIENTS), from which runs with `search_from` draw their tickets. Returns results.json's
    content (the search stage and where the coefficients are). A step `budget` pauses the search (train.Paused)
    after calling `on_pause(gates)`: the stop-time ablation keeps the coefficients of several steps of one search."""
    if config.method != "earlybert" or config.search_from:
        raise ValueError("search_only runs the earlybert method's own search (method earlybert, no search_from)")
    run = _open_run(config, resume, overwrite)
    if isinstance(run, dict):
        return run
    model = _seeded_model(config, run.task_info)
    try:
        ticket, done = _search(run, model, budget)
    except Paused:
        if on_pause is not None:
            on_pause(getattr(model, GATES_ATTR))
        raise
    # The gates of the search just run; a resumed search (read back from its files) has none, but its ticket was
    # drawn from the gates at the step the search stopped, the last step, so its scores are the same coefficients.
    gates = getattr(model, GATES_ATTR, None)
    heads, ffn = gates.scores() if gates is not None else (ticket.head_scores, ticket.ffn_scores)
    if run.accelerator.is_main_process:
        save_coefficients(run.folder.path / COEFFICIENTS, heads, ffn, ticket.step)
    results = {"method": "search", "task": run.task_info.name, "seed": config.seed, "stage": done["stage"],
               "ticket": ticket.summary(), "coefficients": COEFFICIENTS, "wall_time_s": run.clock.stop()}
    run.folder.write_json("results.json", results)  # last: its presence marks the search finished
    run.accelerator.wait_for_everyone()
    return results
