"""Drawing the ticket (paper Sec. 3.2) and comparing tickets (Sec. 3.3, Fig. 1).

A `Ticket` is a plain value: the head and FFN-neuron indices kept in every layer, the shape of the model it
was drawn for, the settings that drew it and the coefficients it was drawn from. It serialises to versioned
JSON, so a ticket found in one run can be applied in another, or read by a person.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import torch

from .runs import atomic_write_text

TICKET_VERSION = 1


@dataclass
class TicketConfig:
    """How many heads and FFN neurons to prune, and how to choose them.

    Heads are always chosen layer-wise (global head pruning can empty a layer, Sec. 3.2): give
    `head_ratio` (fraction of each layer's heads, default 1/3) or `head_count` (heads per layer), not both.
    FFN neurons: `ffn_ratio` of all neurons, smallest |c| across all layers (`ffn_scope="global"`, the paper's
    choice) or within each layer (`"layer"`). Every layer keeps at least `min_heads` heads and
    `min_ffn` neurons. `ffn_multiple` > 1 rounds each layer's kept FFN width to a multiple of it (e.g. 64 for
    tensor-core friendly shapes on accelerators).
    """

    head_ratio: float | None = None  # None and no head_count: the paper's 1/3
    head_count: int | None = None
    ffn_ratio: float = 0.4
    ffn_scope: Literal["global", "layer"] = "global"
    min_heads: int = 1
    min_ffn: int = 1
    ffn_multiple: int = 1

    def __post_init__(self):
        if self.head_ratio is not None and self.head_count is not None:
            raise ValueError("give head_ratio or head_count, not both")
        if self.head_ratio is None and self.head_count is None:
            self.head_ratio = 1 / 3
        if self.head_ratio is not None and not 0 <= self.head_ratio < 1:
            raise ValueError(f"head_ratio must be in [0, 1), got {self.head_ratio}")
        if self.head_count is not None and self.head_count < 0:
            raise ValueError(f"head_count must be >= 0, got {self.head_count}")
        if not 0 <= self.ffn_ratio < 1:
            raise ValueError(f"ffn_ratio must be in [0, 1), got {self.ffn_ratio}")
        if self.ffn_scope not in ("global", "layer"):
            raise ValueError(f"ffn_scope must be 'global' or 'layer', got {self.ffn_scope!r}")
        if self.min_heads < 1:
            raise ValueError(f"min_heads must be >= 1, got {self.min_heads}")
        if self.min_ffn < 1:
            raise ValueError(f"min_ffn must be >= 1, got {self.min_ffn}")
        if self.ffn_multiple < 1:
            raise ValueError(f"ffn_multiple must be >= 1, got {self.ffn_multiple}")

    def heads_to_prune(self, num_heads: int) -> int:
        # round half up, like the FFN rounding (Python's round() would send 2.5 to 2)
        wanted = self.head_count if self.head_count is not None else math.floor(self.head_ratio * num_heads + 0.5)
        if wanted > num_heads - self.min_heads:
            raise ValueError(
                f"cannot prune {wanted} of {num_heads} heads in a layer and keep min_heads={self.min_heads}"
            )
        return wanted


@dataclass
class Ticket:
    """Kept structure of a pruned encoder, layer by layer (indices into the model it was drawn for)."""

    heads: list[list[int]]  # kept head indices per layer, ascending
    ffn: list[list[int]]  # kept FFN neuron indices per layer, ascending
    num_heads: list[int]  # heads per layer of the model the ticket was drawn for
    ffn_sizes: list[int]  # FFN width per layer of that model
    config: dict = field(default_factory=dict)  # the TicketConfig that drew it (empty for hand-made tickets)
    head_scores: list[list[float]] | None = None  # the coefficients it was drawn from
    ffn_scores: list[list[float]] | None = None
    step: int | None = None  # search step at which it was drawn
    version: int = TICKET_VERSION

    def __post_init__(self):
        if self.version != TICKET_VERSION:
            raise ValueError(f"ticket version {self.version} is not supported (this earlybert reads {TICKET_VERSION})")
        n = len(self.num_heads)
        if not (len(self.heads) == len(self.ffn) == len(self.ffn_sizes) == n):
            raise ValueError("ticket has inconsistent numbers of layers")
        for kind, kept, sizes in (("head", self.heads, self.num_heads), ("FFN neuron", self.ffn, self.ffn_sizes)):
            for layer, (keep, size) in enumerate(zip(kept, sizes)):
                if not all(isinstance(i, int) and not isinstance(i, bool) for i in keep):
                    raise ValueError(f"ticket {kind} indices in layer {layer} must be integers")
                if not keep:
                    raise ValueError(f"ticket keeps no {kind}s in layer {layer}")
                if list(keep) != sorted(set(keep)) or keep[0] < 0 or keep[-1] >= size:
                    raise ValueError(
                        f"ticket {kind} indices in layer {layer} must be unique, ascending and in [0, {size})"
                    )

    # -- shape -----------------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.num_heads)

    @property
    def kept_heads(self) -> list[int]:
        return [len(h) for h in self.heads]

    @property
    def kept_ffn(self) -> list[int]:
        return [len(f) for f in self.ffn]

    def head_masks(self) -> list[torch.Tensor]:
        return [_mask(keep, size) for keep, size in zip(self.heads, self.num_heads)]

    def ffn_masks(self) -> list[torch.Tensor]:
        return [_mask(keep, size) for keep, size in zip(self.ffn, self.ffn_sizes)]

    def summary(self) -> str:
        heads, ffn = sum(self.kept_heads), sum(self.kept_ffn)
        return (
            f"kept {heads}/{sum(self.num_heads)} heads, {ffn}/{sum(self.ffn_sizes)} FFN neurons; "
            f"per layer heads {self.kept_heads}, FFN {self.kept_ffn}"
        )

    # -- serialisation ---------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Ticket":
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"not a ticket: unknown fields {sorted(unknown)}")
        return cls(**data)

    def save(self, path: str | os.PathLike) -> None:
        """Write JSON atomically (temp file + rename), so an interrupted save never leaves half a ticket."""
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Ticket":
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ValueError(f"ticket file {path} does not exist") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"ticket file {path} is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise ValueError(f"ticket file {path} does not hold a JSON object")
        return cls.from_dict(data)


def _mask(keep: Sequence[int], size: int) -> torch.Tensor:
    mask = torch.zeros(size, dtype=torch.bool)
    mask[list(keep)] = True
    return mask


def _smallest_first(scores: torch.Tensor) -> torch.Tensor:
    """Indices by ascending |c|; a stable sort makes ties go to the lower index, deterministically."""
    return torch.sort(scores.abs(), stable=True).indices


def _round_to_multiple(kept: int, multiple: int, lo: int, hi: int) -> int:
    if multiple == 1:
        return kept
    rounded = int(math.floor(kept / multiple + 0.5)) * multiple
    return min(hi, max(lo, multiple, rounded))


def _ffn_kept_counts(ffn_scores: list[torch.Tensor], config: TicketConfig) -> list[int]:
    sizes = [len(s) for s in ffn_scores]
    for layer, size in enumerate(sizes):
        if size < config.min_ffn:
            raise ValueError(f"layer {layer} has {size} FFN neurons, fewer than min_ffn={config.min_ffn}")
    if config.ffn_scope == "layer":
        return [max(config.min_ffn, size - math.floor(config.ffn_ratio * size + 0.5)) for size in sizes]
    # Global: the kept neurons of each layer in the one global draw (see _global_ffn_mask).
    return [int(kept.sum()) for kept in _global_ffn_mask(ffn_scores, config).split(sizes)]


def draw_masks(
    head_scores: Sequence[torch.Tensor],
    ffn_scores: Sequence[torch.Tensor],
    config: TicketConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The kept/pruned masks of the ticket `draw_ticket` draws, all layers concatenated (heads, FFN), on the
    scores' device. The early-bird tracker calls this at every record: with global FFN pruning (the default) it
    never leaves the device, so a search on a GPU does not copy every coefficient to the host each time."""
    config = config or TicketConfig()
    head_scores = [torch.as_tensor(s).detach().float().flatten() for s in head_scores]
    ffn_scores = [torch.as_tensor(s).detach().float().flatten() for s in ffn_scores]
    if len(head_scores) != len(ffn_scores) or not head_scores:
        raise ValueError("need the same, non-zero number of layers of head and FFN scores")
    heads = []
    for scores in head_scores:
        mask = torch.zeros_like(scores, dtype=torch.bool)
        mask[_smallest_first(scores)[config.heads_to_prune(len(scores)) :]] = True
        heads.append(mask)
    if config.ffn_scope == "global" and config.ffn_multiple == 1:
        ffn = _global_ffn_mask(ffn_scores, config)
    else:
        ffn = []
        for scores, n_keep in zip(ffn_scores, _ffn_kept_counts([s.cpu() for s in ffn_scores], config)):
            n_keep = _round_to_multiple(n_keep, config.ffn_multiple, config.min_ffn, len(scores))
            mask = torch.zeros_like(scores, dtype=torch.bool)
            mask[_smallest_first(scores)[len(scores) - n_keep :]] = True
            ffn.append(mask)
        ffn = torch.cat(ffn)
    return torch.cat(heads), ffn


def _global_ffn_mask(ffn_scores: list[torch.Tensor], config: TicketConfig) -> torch.Tensor:
    """The global draw as one mask: prune the ffn_ratio * total smallest |c| across layers, except each layer's
    min_ffn largest (equivalently: walk all neurons from the smallest up, pruning each unless its layer would drop
    below min_ffn). The pruned neurons of each layer are a prefix of that layer's own ascending order, so "not
    pruned" is exactly the kept set a per-layer top-k of the kept counts gives; no count goes through the host."""
    sizes = [len(s) for s in ffn_scores]
    for layer, size in enumerate(sizes):
        if size < config.min_ffn:
            raise ValueError(f"layer {layer} has {size} FFN neurons, fewer than min_ffn={config.min_ffn}")
    device = ffn_scores[0].device
    offsets = [0]
    for n in sizes[:-1]:
        offsets.append(offsets[-1] + n)
    protected = torch.zeros(sum(sizes), dtype=torch.bool, device=device)
    for offset, scores in zip(offsets, ffn_scores):
        protected[offset + _smallest_first(scores)[len(scores) - config.min_ffn :]] = True
    order = _smallest_first(torch.cat(ffn_scores))
    kept = torch.ones(sum(sizes), dtype=torch.bool, device=device)
    kept[order[~protected[order]][: math.floor(config.ffn_ratio * sum(sizes) + 0.5)]] = False
    return kept


def draw_ticket(
    head_scores: Sequence[torch.Tensor],
    ffn_scores: Sequence[torch.Tensor],
    config: TicketConfig | None = None,
    step: int | None = None,
) -> Ticket:
    """Keep the heads and FFN neurons with the largest |coefficient| (magnitude, not signed value).

    `head_scores[l]` / `ffn_scores[l]` hold layer l's coefficients, e.g. from `GateSet.scores()`.
    """
    config = config or TicketConfig()
    head_scores = [torch.as_tensor(s, dtype=torch.float32).detach().cpu().flatten() for s in head_scores]
    ffn_scores = [torch.as_tensor(s, dtype=torch.float32).detach().cpu().flatten() for s in ffn_scores]
    head_mask, ffn_mask = draw_masks(head_scores, ffn_scores, config)
    heads = [m.nonzero().flatten().tolist() for m in head_mask.split([len(s) for s in head_scores])]
    ffn = [m.nonzero().flatten().tolist() for m in ffn_mask.split([len(s) for s in ffn_scores])]
    return Ticket(
        heads=heads,
        ffn=ffn,
        num_heads=[len(s) for s in head_scores],
        ffn_sizes=[len(s) for s in ffn_scores],
        config=asdict(config),
        head_scores=[s.tolist() for s in head_scores],
        ffn_scores=[s.tolist() for s in ffn_scores],
        step=step,
    )


def random_ticket(like: Ticket, seed: int) -> Ticket:
    """A ticket with the same number of heads and neurons per layer as `like`, chosen uniformly at random.

    The paper's "Random" baseline: same shape, no search.
    """
    generator = torch.Generator().manual_seed(seed)
    pick = lambda size, k: sorted(torch.randperm(size, generator=generator)[:k].tolist())  # noqa: E731
    return Ticket(
        heads=[pick(n, k) for n, k in zip(like.num_heads, like.kept_heads)],
        ffn=[pick(n, k) for n, k in zip(like.ffn_sizes, like.kept_ffn)],
        num_heads=list(like.num_heads),
        ffn_sizes=list(like.ffn_sizes),
        config={**like.config, "random_seed": seed},
    )


def random_scores_ticket(num_heads: Sequence[int], ffn_sizes: Sequence[int], config: TicketConfig | None = None,
                         seed: int = 0) -> Ticket:
    """A ticket drawn by `config` from uniformly random coefficients: a random ticket of the configured ratios
    (with global FFN pruning the per-layer widths are then left to chance). Use `random_ticket` to copy the
    exact per-layer shape of another ticket instead."""
    generator = torch.Generator().manual_seed(seed)
    ticket = draw_ticket([torch.rand(n, generator=generator) for n in num_heads],
                         [torch.rand(n, generator=generator) for n in ffn_sizes], config)
    ticket.config["random_seed"] = seed
    return ticket


def full_ticket(num_heads: Sequence[int], ffn_sizes: Sequence[int]) -> Ticket:
    """The ticket that keeps everything (pruning with it is the identity)."""
    return Ticket(
        heads=[list(range(n)) for n in num_heads],
        ffn=[list(range(n)) for n in ffn_sizes],
        num_heads=list(num_heads),
        ffn_sizes=list(ffn_sizes),
    )


@dataclass
class MaskDistance:
    """Normalised Hamming distance between two tickets' masks: fraction of units whose kept/pruned differs."""

    heads: float
    ffn: float
    heads_per_layer: list[float]
    ffn_per_layer: list[float]


def mask_distance(a: Ticket, b: Ticket) -> MaskDistance:
    if a.num_heads != b.num_heads or a.ffn_sizes != b.ffn_sizes:
        raise ValueError("cannot compare tickets drawn for differently shaped models")

    def per_layer(xs, ys):
        diffs = [(x ^ y).sum().item() for x, y in zip(xs, ys)]
        return diffs, [d / len(x) for d, x in zip(diffs, xs)], sum(diffs) / sum(len(x) for x in xs)

    _, heads_layer, heads = per_layer(a.head_masks(), b.head_masks())
    _, ffn_layer, ffn = per_layer(a.ffn_masks(), b.ffn_masks())
    return MaskDistance(heads=heads, ffn=ffn, heads_per_layer=heads_layer, ffn_per_layer=ffn_layer)
