"""Efficient pre-training (paper Sec. 3.2 "Efficient-training Stage", 4.3, App. C): MLM from a random init.

`pretrain(config)` trains a BERT-family masked language model from random initial weights theta_0 in two
phases (9/10 of the steps at sequence length 128, 1/10 at 512; LAMB with warm-up and linear decay, each
phase with its own batch size and peak learning rate):
  full       all steps, the whole model;
  earlybert  gates + L1 search from theta_0 in phase 1 (early-bird rule, at most ~400 steps scaled to the run),
             draw 1/3 of heads per layer and 30% of FFN neurons globally, reset the weights to theta_0, prune,
             and train `step_fraction` (80%) of the steps of both phases.
The MLM loss projects onto the vocabulary only at masked positions, for both methods alike: on a small model
most of the cost of a full-sequence projection is spent on positions that carry no loss.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .archs import layer_shapes, max_positions, mlm_head
from .gates import GateConfig
from .prune import prune
from .runs import RunFolder, WallClock, atomic_write_bytes, remove_checkpoint
from .search import EARLY_BIRD_WINDOW, SearchConfig, run_search
from .ticket import TicketConfig
from .train import Paused, StepBudget, TrainConfig, decay_groups, train_stage

logger = logging.getLogger(__name__)

PAPER_STEPS = 8601  # the paper's pre-training length; the search budget (400 steps) scales with it
NAMED_CONFIGS = {
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "bert-large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
    "bert-small": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    # Google's BERT-Mini shape (L-4, H-256, A-4): small enough to pre-train past the unigram plateau on a CPU
    "bert-mini": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
}


PRETRAIN_FFN_RATIO = 0.3  # the paper prunes 30% of FFN neurons in pre-training (40% in fine-tuning)

@dataclass
class PretrainConfig:
    config: str  # a name in NAMED_CONFIGS or a config.json / model folder
    tokenizer: str  # a folder or hub name, or "wordpiece:N": an N-token vocabulary trained on the text (cached)
    text: tuple[str, ...]
    output: str
    method: str = "earlybert"
    steps: int = PAPER_STEPS  # full run's optimizer steps over both phases
    phase1_fraction: float = 0.9
    seq_len: tuple[int, int] = (128, 512)
    batch_size: tuple[int, int] = (64, 32)  # per process and micro-batch; grad_accum scales the effective batch
    grad_accum: tuple[int, int] = (1, 1)
    lr: tuple[float, float] = (6e-3, 4e-3)
    warmup_ratio: tuple[float, float] = (0.2843, 0.128)  # NVIDIA's BERT-LAMB recipe (2000/7038, 200/1563 steps)
    weight_decay: float = 0.01
    held_out: float = 0.01  # tail of the token stream kept for MLM loss / perplexity
    search_steps: int | None = None  # default: round(400 * steps / 8601), at least 1
    gates: GateConfig = field(default_factory=GateConfig)
    ticket: TicketConfig = field(default_factory=lambda: TicketConfig(ffn_ratio=PRETRAIN_FFN_RATIO))
    epsilon: float = SearchConfig.epsilon  # the early-bird rule (see SearchConfig)
    patience: int = SearchConfig.patience
    window: float = EARLY_BIRD_WINDOW  # early-bird window, a share of the search budget (0: the paper's rule)
    step_fraction: float = 0.8  # EarlyBERT trains this fraction of each phase's steps
    seed: int = 42
    checkpoint_every: int = 200
    mixed_precision: str | None = None
    cache_dir: str | None = None  # tokenized corpus cache; default: <output>/../.earlybert-cache

    def __post_init__(self):
        if self.method not in ("full", "earlybert"):
            raise ValueError(f"unknown pre-training method {self.method!r}; choose full or earlybert")
        # Checked here, before any tokenizer or data is read: a name that is not a preset used to go to the hub,
        # which offline retries for minutes before failing. Pre-training needs only a config, so only a preset or
        # a local config.json / model folder is taken (download a hub model's config.json to use its shape).
        if self.config not in NAMED_CONFIGS and not Path(self.config).expanduser().exists():
            raise ValueError(f"unknown config {self.config!r}: choose a preset ({', '.join(NAMED_CONFIGS)}) or give "
                             "a config.json or model folder that exists")
        if isinstance(self.gates, dict):
            self.gates = GateConfig(**self.gates)
        if isinstance(self.ticket, dict):
            self.ticket = TicketConfig(**self.ticket)
        self.text = tuple(self.text)
        for name in ("seq_len", "batch_size", "grad_accum", "lr", "warmup_ratio"):
            value = tuple(getattr(self, name))
            if len(value) != 2:
                raise ValueError(f"{name} needs one value per phase, got {value}")
            setattr(self, name, value)
        if self.steps < 2:
            raise ValueError(f"steps must be >= 2 (one per phase), got {self.steps}")
        if not 0 < self.phase1_fraction < 1:
            raise ValueError(f"phase1_fraction must be in (0, 1), got {self.phase1_fraction}")
        if not 0 < self.step_fraction <= 1:
            raise ValueError(f"step_fraction must be in (0, 1], got {self.step_fraction}")
        if min(self.seq_len) < 8:
            raise ValueError(f"sequence lengths must be >= 8, got {self.seq_len}")
        for phase in (0, 1):
            self.phase_config(phase, self.steps)  # validates batch sizes, learning rates, warm-up
        SearchConfig(epsilon=self.epsilon, patience=self.patience, window=self.window, max_steps=1)

    @property
    def phase_steps(self) -> tuple[int, int]:
        first = max(1, round(self.steps * self.phase1_fraction))
        return first, max(1, self.steps - first)

    @property
    def search_budget(self) -> int:
        return self.search_steps or max(1, round(400 * self.steps / PAPER_STEPS))

    def phase_config(self, phase: int, steps: int) -> TrainConfig:
        return TrainConfig(steps=steps, lr=self.lr[phase], batch_size=self.batch_size[phase],
                           grad_accum=self.grad_accum[phase], warmup_ratio=self.warmup_ratio[phase],
                           weight_decay=self.weight_decay, checkpoint_every=self.checkpoint_every, seed=self.seed)

    def to_dict(self) -> dict:
        return asdict(self)


class MaskedLM(nn.Module):
    """A *ForMaskedLM model whose loss projects onto the vocabulary only at the masked positions.

    A wrapper rather than a function of the model, so that DDP (through accelerate) wraps this forward and
    keeps synchronising gradients."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.head_name = mlm_head(model.config.model_type)  # looked up, not registered twice: the state dict stays the model's
        self.model = model

    def forward(self, input_ids, attention_mask=None, labels=None, **kwargs):
        hidden = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        masked = labels != -100
        logits = getattr(self.model, self.head_name)(hidden[masked])  # (masked tokens, vocab): never the full (batch, length, vocab)
        loss = nn.functional.cross_entropy(logits.float(), labels[masked])
        return _Output(loss=loss, count=masked.sum())


@dataclass
class _Output:
    loss: torch.Tensor
    count: torch.Tensor


def make_lamb(model: nn.Module, lr: float, weight_decay: float, gate_lr: float | None = None) -> torch.optim.Optimizer:
    """LAMB with neither weight decay nor layer adaptation on biases, LayerNorm and gates, as in BERT's recipe;
    the gates (when there are any) at their own learning rate `gate_lr`."""
    from .lamb import Lamb

    decay, *no_adaptation = decay_groups(model, weight_decay, gate_lr)
    return Lamb([decay, *({**g, "layer_adaptation": False} for g in no_adaptation)], lr=lr, betas=(0.9, 0.999), eps=1e-6)


def build_config(name_or_path: str, vocab_size: int):
    """A named size (bert-base, bert-large, bert-small) or a config.json / model folder."""
    from transformers import AutoConfig, BertConfig

    if name_or_path in NAMED_CONFIGS:
        return BertConfig(vocab_size=vocab_size, **NAMED_CONFIGS[name_or_path])
    path = Path(name_or_path)
    try:
        if path.is_file():
            data = json.loads(path.read_text())
            config = AutoConfig.for_model(data.pop("model_type", "bert"), **data)
        else:
            config = AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read a model config from {name_or_path!r}: {str(e).splitlines()[0]}") from None
    mlm_head(config.model_type)  # a family without a masked-LM head fails here, before anything is written
    return config


def prepare(config: PretrainConfig):
    """Tokenizer, model config and data, all checked before anything is written."""
    from . import mlm_data

    files = mlm_data.text_files(list(config.text))
    cache = Path(config.cache_dir) if config.cache_dir else Path(config.output).resolve().parent / ".earlybert-cache"
    tokenizer = mlm_data.load_or_train_tokenizer(config.tokenizer, files, cache)
    if tokenizer.mask_token_id is None or tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
        raise ValueError("the tokenizer needs [CLS], [SEP] and [MASK] tokens for BERT-style MLM")
    model_config = build_config(config.config, len(tokenizer))
    if len(tokenizer) > model_config.vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the config embeds only "
                         f"{model_config.vocab_size}: they do not match")
    limit = max_positions(model_config)
    if limit is not None and max(config.seq_len) > limit:
        raise ValueError(f"sequence length {max(config.seq_len)} exceeds the config's {limit} position embeddings")
    tokens = mlm_data.tokenize_to_cache(files, tokenizer, cache)
    phases = [mlm_data.split(tokens, length, tokenizer, config.held_out) for length in config.seq_len]
    return tokenizer, model_config, phases


def _theta0(model_config, seed: int, folder: Path) -> dict:
    """The random initial weights theta_0, saved once so that a resumed run resets to the very same ones."""
    from safetensors.torch import load_file, save
    from transformers import AutoModelForMaskedLM

    path = folder / "theta0.safetensors"
    if not path.exists():
        torch.manual_seed(seed)
        state = AutoModelForMaskedLM.from_config(model_config).state_dict()
        # tied weights share storage; safetensors wants distinct tensors
        atomic_write_bytes(path, save({k: v.contiguous().clone() for k, v in state.items()}))
    return load_file(str(path))


def _model_from(model_config, theta0: dict) -> nn.Module:
    from transformers import AutoModelForMaskedLM

    # A copy of the config: from_config shares the object, and pruning turns a model's config slim in place.
    model = AutoModelForMaskedLM.from_config(copy.deepcopy(model_config))
    model.load_state_dict(theta0, strict=False)  # tied decoder weights appear under one name only
    return model


@torch.no_grad()
def held_out_loss(wrapper: MaskedLM, dataset, collator, batch_size: int, accelerator) -> dict[str, float]:
    from .data import make_loader

    loader = accelerator.prepare(make_loader(dataset, collator, batch_size))
    model = accelerator.prepare(wrapper)
    model.eval()
    total, count = torch.zeros((), device=accelerator.device), torch.zeros((), device=accelerator.device)
    for batch in loader:
        out = model(**batch)
        total += out.loss.float() * out.count
        count += out.count
    total, count = accelerator.reduce(total), accelerator.reduce(count)
    model.train()
    loss = (total / count.clamp_min(1)).item()
    return {"mlm_loss": loss, "perplexity": math.exp(min(loss, 50.0))}


def _train_stages(config, folder, accelerator, new_accelerator, phases, collator, model_config, theta0, budget):
    """The search (EarlyBERT only) and both phases, each skipped when its results are already in the folder.
    Returns each stage's summary and per-step losses, the ticket (EarlyBERT), the model and its MLM wrapper."""

    stages, losses, ticket = {}, {}, None
    model = _model_from(model_config, theta0)
    if config.method == "earlybert":
        search_cfg = SearchConfig(epsilon=config.epsilon, patience=config.patience, window=config.window,
                                  max_steps=config.search_budget)
        phase1 = config.phase_config(0, config.phase_steps[0])
        phase1.max_steps = config.search_budget
        ticket, done = run_search(
            model, phases[0][0], collator, phase1, search_cfg, config.ticket, config.gates, accelerator,
            new_accelerator(0), folder, wrap=MaskedLM, budget=budget,
            optimizer_fn=lambda m: make_lamb(m, config.lr[0], config.weight_decay, config.gates.learning_rate(config.lr[0])),
        )
        stages["search"], losses["search"] = done["stage"], done["losses"]
        logger.info("stage: draw -> %s; reset to theta_0", ticket.summary())
        model = _model_from(model_config, theta0)  # back to the random init, then slim
        prune(model, ticket)

    fraction = config.step_fraction if config.method == "earlybert" else 1.0
    wrapper = MaskedLM(model)
    for phase in (0, 1):
        name = f"phase{phase + 1}"
        done = folder.read_json(f"{name}.json")
        if done is None:
            steps = max(1, round(config.phase_steps[phase] * fraction))
            logger.info("stage: %s (%d steps at length %d)", name, steps, config.seq_len[phase])
            result = train_stage(
                name, wrapper, phases[phase][0], collator, config.phase_config(phase, steps), new_accelerator(phase),
                checkpoint_dir=folder.path / f"{name}_checkpoint",
                optimizer_fn=lambda m, p=phase: make_lamb(m, config.lr[p], config.weight_decay), budget=budget,
            )
            done = {"stage": result.summary(), "losses": result.losses, "step_times": result.step_times}
            if accelerator.is_main_process:  # the weights after this phase, for a resume in the next one
                model.save_pretrained(folder.path / f"{name}_model")
            folder.write_json(f"{name}.json", done)
            accelerator.wait_for_everyone()
            remove_checkpoint(folder.path / f"{name}_checkpoint", accelerator)
        else:
            from safetensors.torch import load_file

            model.load_state_dict(load_file(str(folder.path / f"{name}_model" / "model.safetensors")), strict=False)
        stages[name], losses[name] = done["stage"], done["losses"]

    return stages, losses, ticket, model, wrapper


def pretrain(config: PretrainConfig, resume: bool = False, overwrite: bool = False,
             stop_after: int | None = None) -> dict | None:
    """Pre-train with `config.method` into `config.output`; returns results.json's content.

    stop_after: run at most this many optimizer steps (search and phases together) in this call, then checkpoint
    and return None; calling again with resume=True continues exactly where it stopped."""
    from accelerate import Accelerator

    from .flops import count_flops
    from .mlm_data import SeededMLMCollator
    from .report import write_pretrain_report  # matplotlib: imported only when a run gets that far

    budget = StepBudget(stop_after) if stop_after is not None else None  # checked before anything is written
    mixed = config.mixed_precision or ("bf16" if torch.cuda.is_available() else "no")

    def new_accelerator(phase: int):
        return Accelerator(mixed_precision=mixed, gradient_accumulation_steps=config.grad_accum[phase],
                           cpu=not torch.cuda.is_available())

    accelerator = new_accelerator(0)
    folder = RunFolder(config.output, resume, overwrite, accelerator.is_main_process)
    finished = folder.check_resume(config.to_dict()) if resume else None
    if finished is not None:
        return finished
    with accelerator.main_process_first():  # rank 0 builds the token cache; the others then read it
        tokenizer, model_config, phases = prepare(config)
    accelerator.wait_for_everyone()
    folder.create()
    clock = WallClock(folder).begin()
    folder.write_json("config.json", config.to_dict())
    with accelerator.main_process_first():  # likewise theta_0: written once, read by every rank
        theta0 = _theta0(model_config, config.seed, folder.path)
    collator = SeededMLMCollator(tokenizer, config.seed)
    try:
        stages, losses, ticket, model, wrapper = _train_stages(config, folder, accelerator, new_accelerator, phases,
                                                       collator, model_config, theta0, budget)
    except Paused as paused:
        logger.info("paused in %s after %d steps; resume to continue", paused, stop_after)
        clock.stop()
        accelerator.wait_for_everyone()
        return None

    # Theoretical saving from linear-layer FLOPs of one phase-1 step (full model vs the model trained here).
    batch = collator([phases[0][0][i] for i in range(min(config.batch_size[0], len(phases[0][0])))])
    flops = {"trained_model": count_flops(wrapper, batch)["linear"],
             "full": count_flops(MaskedLM(_model_from(model_config, theta0)), batch)["linear"]}
    full_cost = sum(config.phase_steps) * flops["full"]
    own_cost = stages.get("search", {}).get("steps", 0) * flops["full"] + sum(
        stages[f"phase{p + 1}"]["steps"] for p in (0, 1)) * flops["trained_model"]
    evaluation = {f"length_{length}": held_out_loss(wrapper, held, collator, config.batch_size[phase], new_accelerator(phase))
                  for phase, (length, (_, held)) in enumerate(zip(config.seq_len, phases))}
    total_step_s = sum(s["step_time_s"] for s in stages.values())
    results = {
        "method": config.method,
        "seed": config.seed,
        "held_out": evaluation,
        "stages": stages,
        "total_step_time_s": total_step_s,
        "wall_time_s": clock.stop(),
        "full_run_steps": list(config.phase_steps),
        "parameters": sum(p.numel() for p in model.parameters()),
        "linear_flops_per_phase1_step": flops,
        "theoretical_fraction_saved_flops": 1 - own_cost / full_cost,
        "layer_shapes": dict(zip(("heads", "ffn"), layer_shapes(model))),
        "ticket": None if ticket is None else {"kept_heads": ticket.kept_heads, "kept_ffn": ticket.kept_ffn},
        "losses": losses,  # per optimizer step of every stage
    }
    if accelerator.is_main_process:
        model.save_pretrained(folder.path / "model")
        tokenizer.save_pretrained(folder.path / "model")
        write_pretrain_report(folder, results, ticket)
        folder.write_json("results.json", results)  # last: its presence marks the run finished (check_resume)
    accelerator.wait_for_everyone()
    return results
