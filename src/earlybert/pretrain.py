"""Efficient pre-training (paper Sec. 3.2 "Efficient-training Stage", 4.3, App. C): MLM from a random init.

`pretrain(config)` trains a BERT-family masked language model from random initial weights theta_0 in two
phases (9/10 of the steps at sequence length 128, 1/10 at 512; LAMB with warm-up and linear decay, each
phase with its own batch size and peak learning rate):
  full       all steps, the whole model;
  earlybert  gates + L1 search from theta_0 in phase 1 (early-bird rule, at most ~400 steps scaled to the run),
             draw 1/3 of heads per layer and 30% of FFN neurons globally, reset the weights to theta_0, prune,
             and train `step_fraction` (80%) of the steps of both phases;
  random     no search: a ticket of EarlyBERT's per-layer shape (`ticket_like`, an EarlyBERT run's ticket.json;
             else the ticket ratios) chosen at random, pruned from theta_0 and trained like EarlyBERT's (the
             baseline the paper skips: does the search find anything a random ticket of the same size lacks?).
`compare_pretraining` runs all three side by side, resumable in slices.
The MLM loss projects onto the vocabulary only at masked positions, for both methods alike: on a small model
most of the cost of a full-sequence projection is spent on positions that carry no loss.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from .archs import config_layer_shapes, layer_shapes, max_positions, mlm_head
from .gates import GateConfig
from .prune import check_ticket_fits, prune
from .runs import (RunFolder, WallClock, atomic_write_bytes, find_checkpoint, fingerprint, remove_checkpoint,
                   write_folder)
from .search import EARLY_BIRD_WINDOW, SearchConfig, run_search
from .ticket import Ticket, TicketConfig, draw_ticket, random_scores_ticket, random_ticket
from .train import Paused, StageResult, StepBudget, TrainConfig, decay_groups, train_stage

logger = logging.getLogger(__name__)

PAPER_STEPS = 8601  # the paper's pre-training length; the search budget (400 steps) scales with it
NAMED_CONFIGS = {
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "bert-large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
    "bert-small": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    # Google's BERT-Mini and BERT-Tiny shapes (L-4, H-256, A-4; L-2, H-128, A-2): sizes a CPU can pre-train
    "bert-mini": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
    "bert-tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512),
    # BERT-Mini's width on 2 layers with 8 heads of 32: the paper's 1/3 of heads per layer is then 3 of 8 (1 of 4
    # in BERT-Mini, 1 of 2 in BERT-Tiny), which brings the CPU step of the pre-training ticket to ~0.75x the full
    # one at batch 128 x length 32 with an 8k vocabulary (BERT-Mini: ~0.78, BERT-Tiny: ~0.84)
    "bert-l2-h256-a8": dict(hidden_size=256, num_hidden_layers=2, num_attention_heads=8, intermediate_size=1024),
}


PRETRAIN_FFN_RATIO = 0.3  # the paper prunes 30% of FFN neurons in pre-training (40% in fine-tuning)
METHODS = ("full", "earlybert", "random")  # also compare's order: the random ticket copies EarlyBERT's shape
OPTIMIZERS = ("lamb", "adamw")
# Fields added after pre-training runs already existed: config.json leaves them out while they hold these
# defaults, so those runs keep their identity and still resume (RunFolder.check_resume compares every key).
_LATER_FIELDS = {"ticket_like": None, "optimizer": "lamb"}

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
    ticket_like: str | None = None  # random method: copy the per-layer shape of this ticket.json
    optimizer: str = "lamb"  # "adamw": AdamW with LAMB's groups, betas and epsilon (no layer-wise trust ratio)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown pre-training method {self.method!r}; choose {', '.join(METHODS)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r} (--optimizer): choose {' or '.join(OPTIMIZERS)}")
        if self.ticket_like is not None and self.method != "random":
            raise ValueError(f"--ticket-like is for the random method only, not {self.method}")
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
        data = asdict(self)
        for name, default in _LATER_FIELDS.items():
            if data[name] == default:
                del data[name]
        return data

    def optimizer_fn(self, phase: int, gate_lr: float | None = None) -> Callable[[nn.Module], torch.optim.Optimizer]:
        """The optimizer maker of a phase's stages: LAMB (the paper's) or AdamW, at that phase's peak rate."""
        make = make_adamw if self.optimizer == "adamw" else make_lamb
        return lambda model: make(model, self.lr[phase], self.weight_decay, gate_lr)


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


def make_adamw(model: nn.Module, lr: float, weight_decay: float, gate_lr: float | None = None) -> torch.optim.Optimizer:
    """AdamW with make_lamb's groups, betas and epsilon, so that the two differ only in LAMB's layer-wise trust
    ratio. Fused: one kernel for all parameters; pre-training runs on CPUs or CUDA (accelerate's cpu flag)."""
    return torch.optim.AdamW(decay_groups(model, weight_decay, gate_lr), lr=lr, betas=(0.9, 0.999), eps=1e-6,
                             fused=True)


def build_config(name_or_path: str, vocab_size: int):
    """A named size (NAMED_CONFIGS) or a config.json / model folder. A local config that leaves vocab_size out
    gets the tokenizer's `vocab_size`: a shape written for pre-training from scratch would otherwise embed the
    family's default vocabulary (30,522 for BERT), and with a small trained vocabulary the unused rows would cost
    more than the encoder (the projection and its softmax run over every row)."""
    from transformers import AutoConfig, BertConfig

    if name_or_path in NAMED_CONFIGS:
        return BertConfig(vocab_size=vocab_size, **NAMED_CONFIGS[name_or_path])
    path = Path(name_or_path)
    try:
        if path.is_file():
            data = json.loads(path.read_text())
            data.setdefault("vocab_size", vocab_size)
            config = AutoConfig.for_model(data.pop("model_type", "bert"), **data)
        else:
            config = AutoConfig.from_pretrained(name_or_path)
            if path.is_dir() and "vocab_size" not in json.loads((path / "config.json").read_text()):
                config.vocab_size = vocab_size
    except (OSError, ValueError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read a model config from {name_or_path!r}: {str(e).splitlines()[0]}") from None
    mlm_head(config.model_type)  # a family without a masked-LM head fails here, before anything is written
    return config


RUN_TOKENIZER = "tokenizer"  # the run folder's own copy of the tokenizer it was started with


def run_tokenizer(output: str | Path) -> Path | None:
    """The tokenizer a run in `output` was started with; None before one was started there."""
    folder = Path(output) / RUN_TOKENIZER
    return folder if (folder / "tokenizer_config.json").exists() else None


def prepare(config: PretrainConfig, tokenizer_dir: str | Path | None = None):
    """Tokenizer, model config and data, all checked before anything is written.

    tokenizer_dir: the tokenizer to use instead of resolving `config.tokenizer`; a resumed run passes its own
    copy (`run_tokenizer`). A vocabulary trained on the corpus is not reproducible (WordPiece training breaks
    ties differently from one training to the next): resolving `wordpiece:N` again where the cache no longer
    held the run's vocabulary (then keyed by the files' modification times, which a fresh copy of the text
    changes) gave a resumed run different token ids for the same words, and its training silently went on with
    scrambled embeddings."""
    from . import mlm_data

    files = mlm_data.text_files(list(config.text))
    like = Ticket.load(config.ticket_like) if config.ticket_like else None  # before the tokenizer cache is written
    cache = Path(config.cache_dir) if config.cache_dir else Path(config.output).resolve().parent / ".earlybert-cache"
    if tokenizer_dir is not None:
        from .tasks import load_tokenizer

        tokenizer = load_tokenizer(str(tokenizer_dir))
    else:
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
    _check_ticket_can_be_drawn(config, model_config, like)
    tokens = mlm_data.tokenize_to_cache(files, tokenizer, cache)
    phases = [mlm_data.split(tokens, length, tokenizer, config.held_out) for length in config.seq_len]
    return tokenizer, model_config, phases


def _check_ticket_can_be_drawn(config: PretrainConfig, model_config, like: Ticket | None) -> None:
    """Ratios this shape cannot take, or a --ticket-like ticket of another shape, fail now rather than after the
    search or mid-run."""
    if like is not None:
        check_ticket_fits(model_config, like)
    elif config.method != "full":
        heads, ffn = config_layer_shapes(model_config)
        draw_ticket([torch.ones(n) for n in heads], [torch.ones(n) for n in ffn], config.ticket)


def unigram_entropy(held_out, special_ids) -> float:
    """Entropy in nats of the unigram distribution of the tokens in `held_out` (packed sequences), from their
    counts, special tokens aside (the MLM collator never masks them): the lowest held-out MLM loss a model
    that predicts every masked token without its context can reach, the plateau every BERT pre-training first
    sits on. (Copying the 10% of targets left visible takes such a model lower, to `context_free_loss`; only a
    loss below that needs the context.)"""
    import numpy as np

    p = _unigram(held_out, special_ids)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def _unigram(held_out, special_ids, size: int = 0):
    """The unigram distribution (numpy, over ids 0..max(size, largest id + 1) - 1) of the tokens in `held_out`,
    from their counts, special tokens at zero."""
    import numpy as np

    tokens = np.asarray(held_out.tokens[held_out.start:held_out.start + len(held_out) * held_out.body])
    counts = np.bincount(tokens, minlength=size).astype(np.float64)
    counts[[i for i in special_ids if i < len(counts)]] = 0
    return counts / counts.sum()


def context_free_loss(held_out, special_ids, vocab_size: int, mask_prob: float = 0.8,
                      random_prob: float = 0.1) -> float:
    """The lowest held-out MLM loss (nats) of a model that sees each target's own input token and nothing else:
    the floor a pre-training sits on until attention carries information, below the unigram entropy because
    BERT's masking leaves `1 - mask_prob - random_prob` of the targets unchanged (10%) and replaces
    `random_prob` (10%) with a token drawn uniformly from the vocabulary (transformers'
    DataCollatorForLanguageModeling). The best such model predicts, at [MASK], the unigram distribution u; at a
    visible token x, the true token's posterior given x: keep * u(x) * [y = x] + random * u(y) / V, normalised.
    Closed form of its expected loss (derived here, a few sums over the vocabulary; nothing in a library
    computes it), exact including a random draw that hits the true token."""
    import numpy as np

    u, V = _unigram(held_out, special_ids, vocab_size)[:vocab_size], float(vocab_size)
    keep = 1.0 - mask_prob - random_prob
    y = u > 0
    entropy = float(-(u[y] * np.log(u[y])).sum())
    # unchanged target y: -log( u(y) (keep + random/V) / (keep u(y) + random/V) )
    unchanged = float((u[y] * -np.log(u[y] * (keep + random_prob / V) / (keep * u[y] + random_prob / V))).sum())
    # randomly replaced target y, input x uniform over the vocabulary: -log(random u(y) / V) + log Z(x) for x != y,
    # and -log(u(y) (random/V + keep)) + log Z(y) for x = y, with Z(x) = keep u(x) + random / V
    log_z_sum = float(np.log(keep * u + random_prob / V).sum())
    replaced = float((u[y] * ((V - 1) / V * -np.log(random_prob * u[y] / V) + log_z_sum / V
                              - np.log(u[y] * (random_prob / V + keep)) / V)).sum())
    return mask_prob * entropy + keep * unchanged + random_prob * replaced


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


def initial_model(model_config, folder: str | Path) -> nn.Module:
    """The model at theta_0 as the run in `folder` saved it, where every method of a comparison starts. Fine-tuned
    like the pre-trained checkpoints, it shows how much of their downstream scores pre-training earned: a small
    encoder fine-tuned from scratch at a high learning rate can score as well as a pre-trained one."""
    from safetensors.torch import load_file

    return _model_from(model_config, load_file(str(Path(folder) / "theta0.safetensors")))


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


@dataclass
class _Run:
    """What every stage of one pre-training run shares."""

    config: PretrainConfig
    folder: RunFolder
    accelerator: object  # the run's own, for what spans stages
    new_accelerator: Callable[[int], object]  # a fresh accelerator for a stage of phase 0 or 1
    phases: list  # (training, held-out) packed sequences per phase
    collator: object
    model_config: object
    theta0: dict
    budget: StepBudget | None
    live: nn.Module | None = None  # the model being trained right now: what a pause evaluates


def _prepare_full(run: _Run) -> tuple[nn.Module, Ticket | None, dict, dict]:
    return _model_from(run.model_config, run.theta0), None, {}, {}


def _prepare_earlybert(run: _Run) -> tuple[nn.Module, Ticket | None, dict, dict]:
    """Search from theta_0 (gates + L1, early-bird stop), draw, reset to theta_0 and prune."""
    config = run.config
    run.live = model = _model_from(run.model_config, run.theta0)
    search_cfg = SearchConfig(epsilon=config.epsilon, patience=config.patience, window=config.window,
                              max_steps=config.search_budget)
    phase1 = config.phase_config(0, config.phase_steps[0])
    phase1.max_steps = config.search_budget
    ticket, done = run_search(
        model, run.phases[0][0], run.collator, phase1, search_cfg, config.ticket, config.gates, run.accelerator,
        run.new_accelerator(0), run.folder, wrap=MaskedLM, budget=run.budget,
        optimizer_fn=config.optimizer_fn(0, config.gates.learning_rate(config.lr[0])),
    )
    logger.info("stage: draw -> %s; reset to theta_0", ticket.summary())
    model = _model_from(run.model_config, run.theta0)  # back to the random init, then slim
    prune(model, ticket)
    return model, ticket, {"search": done["stage"]}, {"search": done["losses"]}


def _prepare_random(run: _Run) -> tuple[nn.Module, Ticket | None, dict, dict]:
    """A random ticket of EarlyBERT's per-layer shape (or of the ticket ratios), drawn once: a resumed run reads
    its own ticket.json back rather than trusting that --ticket-like still holds the same ticket."""
    config = run.config
    saved = run.folder.read_json("ticket.json")
    if saved is None:
        if config.ticket_like:
            ticket = random_ticket(Ticket.load(config.ticket_like), config.seed)
        else:
            ticket = random_scores_ticket(*config_layer_shapes(run.model_config), config.ticket, config.seed)
        run.folder.write_json("ticket.json", ticket.to_dict())
    else:
        ticket = Ticket.from_dict(saved)
    logger.info("stage: random ticket -> %s; pruned from theta_0", ticket.summary())
    model = _model_from(run.model_config, run.theta0)
    prune(model, ticket)
    return model, ticket, {}, {}


_PREPARE = {"full": _prepare_full, "earlybert": _prepare_earlybert, "random": _prepare_random}


def _train_stages(run: _Run):
    """The method's preparation (EarlyBERT: the search) and both phases, each skipped when its results are already
    in the folder. Returns each stage's summary and per-step losses, the ticket, the model and its MLM wrapper."""
    config, folder = run.config, run.folder
    model, ticket, stages, losses = _PREPARE[config.method](run)
    fraction = 1.0 if config.method == "full" else config.step_fraction  # a ticket trains the slim model for less
    wrapper = MaskedLM(model)
    run.live = model
    for phase in (0, 1):
        name = f"phase{phase + 1}"
        done = folder.read_json(f"{name}.json")
        if done is None:
            steps = max(1, round(config.phase_steps[phase] * fraction))
            logger.info("stage: %s (%d steps at length %d)", name, steps, config.seq_len[phase])
            result = train_stage(
                name, wrapper, run.phases[phase][0], run.collator, config.phase_config(phase, steps),
                run.new_accelerator(phase), checkpoint_dir=folder.path / f"{name}_checkpoint",
                optimizer_fn=config.optimizer_fn(phase), budget=run.budget,
            )
            done = {"stage": result.summary(), "losses": result.losses, "step_times": result.step_times}
            if run.accelerator.is_main_process:  # the weights after this phase, for a resume in the next one
                model.save_pretrained(folder.path / f"{name}_model")
            folder.write_json(f"{name}.json", done)
            run.accelerator.wait_for_everyone()
            remove_checkpoint(folder.path / f"{name}_checkpoint", run.accelerator)
        else:
            from safetensors.torch import load_file

            model.load_state_dict(load_file(str(folder.path / f"{name}_model" / "model.safetensors")), strict=False)
        stages[name], losses[name] = done["stage"], done["losses"]
    return stages, losses, ticket, model, wrapper


CURVE = "held_out_curve.json"


def _record_curve_point(run: _Run, stage: str, sequences: int) -> None:
    """Append to held_out_curve.json the held-out MLM loss of the model as it is now (on the first `sequences`
    held-out sequences of phase 1's length, the same masks every time) and the steps and step time spent so far,
    the in-progress stage's read from its checkpoint: one point of the loss-against-step-time curve."""
    from torch.utils.data import Subset

    curve = run.folder.read_json(CURVE) or []
    if stage == "end" and curve and curve[-1]["stage"] == "end":
        return  # a rerun after a kill between the end point and results.json
    steps, seconds = 0, 0.0
    for name in ("search", "phase1", "phase2"):
        done = run.folder.read_json(f"{name}.json")
        checkpoint = find_checkpoint(run.folder.path / f"{name}_checkpoint") if name == stage else None
        if done is not None:
            steps, seconds = steps + done["stage"]["steps"], seconds + done["stage"]["step_time_s"]
        elif checkpoint is not None:
            result = StageResult(**json.loads((checkpoint / "progress.json").read_text())["result"])
            steps, seconds = steps + result.steps, seconds + result.step_time_s
    held = run.phases[0][1]
    subset = Subset(held, range(min(sequences, len(held))))
    loss = held_out_loss(MaskedLM(run.live), subset, run.collator, run.config.batch_size[0], run.new_accelerator(0))
    point = {"stage": stage, "steps": steps, "step_time_s": seconds, "sequences": len(subset), **loss}
    run.folder.write_json(CURVE, [*curve, point])


def linear_flops(model: nn.Module, batch: dict) -> int:
    """Linear-layer FLOPs of one training step of `model` on `batch`, wherever the model is: the trained model is
    still on the device it trained on (a GPU), theta_0's model on the host, the batch fresh from the collator."""
    from .flops import count_flops

    device = next(model.parameters()).device
    return count_flops(model, {k: v.to(device) for k, v in batch.items()})["linear"]


def _results(run: _Run, stages: dict, losses: dict, ticket: Ticket | None, model: nn.Module, wrapper: MaskedLM,
             clock: WallClock) -> dict:
    """results.json's content: held-out loss at both lengths, stages, step time, FLOP saving, the ticket."""
    config, phases, collator = run.config, run.phases, run.collator
    # Theoretical saving from linear-layer FLOPs of one phase-1 step (full model vs the model trained here).
    batch = collator([phases[0][0][i] for i in range(min(config.batch_size[0], len(phases[0][0])))])
    flops = {"trained_model": linear_flops(wrapper, batch),
             "full": linear_flops(MaskedLM(_model_from(run.model_config, run.theta0)), batch)}
    full_cost = sum(config.phase_steps) * flops["full"]
    own_cost = stages.get("search", {}).get("steps", 0) * flops["full"] + sum(
        stages[f"phase{p + 1}"]["steps"] for p in (0, 1)) * flops["trained_model"]
    evaluation = {f"length_{length}": held_out_loss(wrapper, held, collator, config.batch_size[phase],
                                                    run.new_accelerator(phase))
                  for phase, (length, (_, held)) in enumerate(zip(config.seq_len, phases))}
    return {
        "method": config.method,
        "seed": config.seed,
        "held_out": evaluation,
        "stages": stages,
        "total_step_time_s": sum(s["step_time_s"] for s in stages.values()),
        "wall_time_s": clock.stop(),  # after the evaluation: it is part of the run
        "full_run_steps": list(config.phase_steps),
        "parameters": sum(p.numel() for p in model.parameters()),
        "linear_flops_per_phase1_step": flops,
        "theoretical_fraction_saved_flops": 1 - own_cost / full_cost,
        "layer_shapes": dict(zip(("heads", "ffn"), layer_shapes(model))),
        "ticket": None if ticket is None else {"kept_heads": ticket.kept_heads, "kept_ffn": ticket.kept_ffn},
        "held_out_curve": run.folder.read_json(CURVE) or [],
        "losses": losses,  # per optimizer step of every stage
    }


def pretrain(config: PretrainConfig, resume: bool = False, overwrite: bool = False,
             stop_after: int | None = None, curve_sequences: int = 0) -> dict | None:
    """Pre-train with `config.method` into `config.output`; returns results.json's content.

    stop_after: run at most this many optimizer steps (search and phases together) in this call, then checkpoint
    and return None; calling again with resume=True continues exactly where it stopped.
    curve_sequences > 0: at every such pause and at the end, the held-out MLM loss on that many held-out
    sequences joins held_out_curve.json with the step time so far (evaluation only: training is unchanged)."""
    from accelerate import Accelerator

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
    pinned = run_tokenizer(folder.path) if resume and not folder.replace else None
    with accelerator.main_process_first():  # rank 0 builds the token cache; the others then read it
        tokenizer, model_config, phases = prepare(config, pinned)
    accelerator.wait_for_everyone()
    # the token stream (named by the text's content and the vocabulary) and where it is cut into sequences
    data = fingerprint([Path(phases[0][0].path).name],
                       [f"{part.seq_len}:{part.start}:{part.stop}" for phase in phases for part in phase])
    source = "--text " + ",".join(config.text)
    if resume:
        folder.check_data(data, source)
    folder.create()
    folder.keep_data(data, source)
    if pinned is None and accelerator.is_main_process:
        if resume and folder.read_json("config.json") is not None:  # a resumed run that kept no tokenizer
            logger.warning("%s was started before runs kept their tokenizer: resolving %r again may give other "
                           "token ids than the run was trained with", folder.path, config.tokenizer)
        write_folder(folder.path / RUN_TOKENIZER, tokenizer.save_pretrained)
    clock = WallClock(folder).begin()
    folder.write_json("config.json", config.to_dict())
    with accelerator.main_process_first():  # likewise theta_0: written once, read by every rank
        theta0 = _theta0(model_config, config.seed, folder.path)
    run = _Run(config, folder, accelerator, new_accelerator, phases, SeededMLMCollator(tokenizer, config.seed),
               model_config, theta0, budget)
    if curve_sequences and folder.read_json(CURVE) is None:  # the curve's origin: theta_0, where every method starts
        run.live = _model_from(model_config, theta0)
        _record_curve_point(run, "start", curve_sequences)
    try:
        stages, losses, ticket, model, wrapper = _train_stages(run)
    except Paused as paused:
        logger.info("paused in %s after %d steps; resume to continue", paused, stop_after)
        if curve_sequences:
            _record_curve_point(run, str(paused), curve_sequences)
        clock.stop()
        accelerator.wait_for_everyone()
        return None
    if curve_sequences:
        _record_curve_point(run, "end", curve_sequences)
    results = _results(run, stages, losses, ticket, model, wrapper, clock)
    if accelerator.is_main_process:
        model.save_pretrained(folder.path / "model")
        tokenizer.save_pretrained(folder.path / "model")
        # the random ticket has no search, hence no mask history to plot
        write_pretrain_report(folder, results, ticket if config.method == "earlybert" else None)
        folder.write_json("results.json", results)  # last: its presence marks the run finished (check_resume)
    accelerator.wait_for_everyone()
    return results


def compare_pretraining(base: PretrainConfig, resume: bool = False, overwrite: bool = False,
                        stop_after: int | None = None, ticket_like: str | None = None,
                        curve_sequences: int = 0, methods: Sequence[str] = METHODS) -> dict[str, dict | None]:
    """Full, EarlyBERT and a random ticket pre-trained from the same theta_0 on the same batches, each into
    <base.output>/<method>; returns each method's results, None for one that paused (see `pretrain`).

    The random ticket copies the per-layer shape of `ticket_like`, by default EarlyBERT's own ticket: until
    EarlyBERT's search has drawn it, the random run waits (None). With stop_after, repeated calls with
    resume=True interleave the runs slice by slice, so a drift in a shared machine's speed falls on all alike.
    `methods`: a subset, for runs spread over processes (each run is a folder of its own)."""
    root = Path(base.output)
    results: dict[str, dict | None] = {}
    for method in methods:
        output = root / method
        like = (ticket_like or str(root / "earlybert" / "ticket.json")) if method == "random" else None
        if resume and (output / "results.json").exists():
            results[method] = json.loads((output / "results.json").read_text())
        elif like is not None and ticket_like is None and not Path(like).exists():
            logger.info("random: waits for EarlyBERT's ticket (its search has not ended)")
            results[method] = None
        else:
            config = replace(base, method=method, output=str(output), ticket_like=like)
            results[method] = pretrain(config, resume, overwrite, stop_after, curve_sequences)
    return results


def comparison_summary(results: dict[str, dict]) -> dict:
    """comparison.json: each method's step time and held-out loss, and the share of the full run's step time
    that EarlyBERT (search included) and the random ticket saved."""
    summary = {m: {"total_step_time_s": r["total_step_time_s"], "held_out": r["held_out"]} for m, r in results.items()}
    full = results["full"]["total_step_time_s"]
    summary["time_saved"] = 1 - results["earlybert"]["total_step_time_s"] / full
    summary["time_saved_random"] = 1 - results["random"]["total_step_time_s"] / full
    return summary
