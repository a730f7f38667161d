"""The searching stage (paper Sec. 3.2-3.3): train model + gates with the L1 penalty until the ticket emerges.

`EarlyBird` is the part every training loop needs: call `record(step, gates)` once per optimizer step (not
per micro-batch); it draws the ticket that *would* be drawn now, keeps the history (the data of Fig. 1) and
returns True when the search should stop, either because the ticket has converged or because the step budget
is spent. `search()` is a complete minimal loop built on it, for users without their own.

The early-bird rule of You et al. 2020 (and of the paper) compares the newest mask with the previous
`patience` recorded masks. On its own that does not measure convergence: how far apart those records are in
steps is an accident of the recording interval, and a mask that drifts slowly passes it when recorded often
(measured: each mask within 0.1 of the previous five, the first and last 0.3 apart). Here (window > 0) the rule
instead asks the question the stop is for: would the rest of the budget still change the ticket? Over a trailing
*window of steps* (a fixed share of the budget) it fits the distance between the newest mask and each earlier
one as a line in their distance in steps, d(lag) = swap + drift * lag, and stops only when swap + drift *
(steps left in the budget) < epsilon. A mask that drifts by `drift` per step therefore passes only once the
remaining steps cannot move it by epsilon, whatever the recording interval; units that only swap back and forth at
the pruning threshold add to `swap`, not to `drift`, and do not block the stop. `window=0` is the paper's rule
exactly.
"""

from __future__ import annotations

import base64
import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from .gates import GateConfig, GateSet, add_gates, add_penalty_gradient, get_gates, penalize
from .ticket import Ticket, TicketConfig, draw_masks, draw_ticket

logger = logging.getLogger(__name__)


# The early-bird rule's trailing window as a share of the search budget: the steps its drift is measured over
# (bench/results/early_bird_cpu.md replays the rule on recorded searches): see SearchConfig.
EARLY_BIRD_WINDOW = 0.25
# Earlier records the window must hold before the windowed rule may stop: two distances at two lags are the least
# a line can be fitted to; with fewer the drift is unknown, so a search with records sparser than that runs on.
MIN_WINDOW_RECORDS = 2


@dataclass
class SearchConfig:
    """When the search stops.

    epsilon, window: the early-bird rule; stop once the distances (normalised Hamming) between the newest mask
        and the masks recorded in the last `window` x budget steps (the history must reach back that far and
        hold at least MIN_WINDOW_RECORDS of them) forecast a distance under `epsilon` (strictly, heads and FFN
        alike) to the mask the rest of the budget would draw (`forecast_distance`).
    patience: window=0 only, the paper's rule: the newest mask within `epsilon` of each of the previous
        `patience` recorded masks. It counts records, not steps, so the windowed rule does not use it.
    max_steps: hard budget in optimizer steps; or
    max_epoch_fraction + steps_per_epoch: the budget as a fraction of an epoch (paper: 0.2 for fine-tuning).
        When both budgets are given the smaller wins; at least one must be given so a search always ends.
    record_every: draw and record a mask every this many optimizer steps.
    """

    epsilon: float = 0.1
    patience: int = 5
    window: float = EARLY_BIRD_WINDOW
    max_steps: int | None = None
    max_epoch_fraction: float | None = None
    steps_per_epoch: int | None = None
    record_every: int = 1

    def __post_init__(self):
        if not 0 <= self.epsilon <= 1:
            raise ValueError(f"epsilon must be in [0, 1], got {self.epsilon}")
        if self.patience < 1:
            raise ValueError(f"patience must be >= 1, got {self.patience}")
        if not 0 <= self.window <= 1:
            raise ValueError(f"window must be a fraction of the budget in [0, 1], got {self.window}")
        if self.record_every < 1:
            raise ValueError(f"record_every must be >= 1, got {self.record_every}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.max_epoch_fraction is not None:
            if not 0 < self.max_epoch_fraction:
                raise ValueError(f"max_epoch_fraction must be > 0, got {self.max_epoch_fraction}")
            if not self.steps_per_epoch or self.steps_per_epoch < 1:
                raise ValueError("max_epoch_fraction needs steps_per_epoch >= 1")
        if self.budget is None:
            raise ValueError("a search needs a budget: set max_steps or max_epoch_fraction + steps_per_epoch")

    @property
    def budget(self) -> int | None:
        budgets = []
        if self.max_steps is not None:
            budgets.append(self.max_steps)
        if self.max_epoch_fraction is not None and self.steps_per_epoch:
            budgets.append(max(1, math.ceil(self.max_epoch_fraction * self.steps_per_epoch)))
        return min(budgets) if budgets else None

    @property
    def window_steps(self) -> int:
        """The trailing window of the early-bird rule in optimizer steps."""
        return math.ceil(self.window * self.budget)


def forecast_distance(lags: torch.Tensor, distances: torch.Tensor, steps_left: int) -> float:
    """The distance the newest mask is forecast to have from the mask `steps_left` steps later.

    lags, distances: how many steps back each earlier mask of the window was recorded (at least two different
    lags, all > 0), and its normalised Hamming distance from the newest. A least-squares line d(lag) = swap +
    drift * lag separates units that only trade places at the pruning threshold (`swap`: a distance that does
    not grow with the lag) from a ranking that is still moving (`drift` per step); the forecast is swap + drift *
    steps_left. A falling line (masks further back are closer) counts as no drift. Written here because it is two
    moments of a handful of points, not worth a fitting library's call."""
    lags, distances = lags.double(), distances.double()
    if len(lags) != len(distances) or len(lags.unique()) < 2 or (lags <= 0).any():
        raise ValueError("the forecast needs at least two different lags, all > 0, one distance each")
    centred = lags - lags.mean()
    drift = ((centred * (distances - distances.mean())).sum() / (centred**2).sum()).clamp_min(0)
    swap = (distances - drift * lags).mean().clamp_min(0)
    return float(swap + drift * steps_left)


def _pack(mask: torch.Tensor) -> str:
    """A bool mask as base64 of its packed bits: 1/8 byte per unit, so long histories stay small on disk."""
    return base64.b64encode(np.packbits(mask.numpy()).tobytes()).decode("ascii")


def _unpack(text: str, size: int) -> torch.Tensor:
    bits = np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))[:size]
    return torch.from_numpy(bits.astype(bool))


@dataclass
class EarlyBird:
    """Mask history and early-bird stopping for one search.

    The history keeps one bool mask per record (all layers concatenated; heads and FFN apart) rather than
    tickets: a BERT-base ticket's index lists take ~1 MB of Python objects, its mask 37 kB of bools.
    Only the newest ticket, the one that is drawn when the search stops, is kept whole.
    """

    ticket_config: TicketConfig = field(default_factory=TicketConfig)
    search_config: SearchConfig = field(default_factory=lambda: SearchConfig(max_steps=1000))
    steps: list[int] = field(default_factory=list)
    head_masks: list[torch.Tensor] = field(default_factory=list)
    ffn_masks: list[torch.Tensor] = field(default_factory=list)
    num_heads: list[int] = field(default_factory=list)  # per-layer sizes of the masks
    ffn_sizes: list[int] = field(default_factory=list)
    newest: Ticket | None = None
    stop_reason: str | None = None  # "early-bird" or "budget" once stopped
    # the newest record's coefficients, kept on their device; the Ticket is built from them only when asked for
    _newest_scores: tuple | None = field(default=None, repr=False, compare=False)

    def record(self, step: int, gates: GateSet | nn.Module) -> bool:
        """Draw and keep the current ticket at optimizer step `step` (1-based); True when the search must stop.

        The masks are drawn where the gates live (`draw_masks`): on a GPU nothing but the early-bird verdict
        comes back to the host at a record."""
        if step % self.search_config.record_every == 0 or step >= self.search_config.budget:
            gates = gates if isinstance(gates, GateSet) else get_gates(gates)
            heads = [g.detach().float().clone() for g in gates.head]
            ffn = [g.detach().float().clone() for g in gates.ffn]
            head_mask, ffn_mask = draw_masks(heads, ffn, self.ticket_config)
            self._append(step, [len(h) for h in heads], [len(f) for f in ffn], head_mask, ffn_mask)
            self.newest, self._newest_scores = None, (step, heads, ffn)
            if self.converged():
                self.stop_reason = "early-bird"
        if self.stop_reason is None and step >= self.search_config.budget:
            self.stop_reason = "budget"
        return self.stop_reason is not None

    def add(self, step: int, ticket: Ticket) -> None:
        """Record a ticket drawn elsewhere (or made by hand) at `step`."""
        self._append(step, ticket.num_heads, ticket.ffn_sizes, torch.cat(ticket.head_masks()),
                     torch.cat(ticket.ffn_masks()))
        self.newest, self._newest_scores = ticket, None

    def _append(self, step: int, num_heads, ffn_sizes, head_mask: torch.Tensor, ffn_mask: torch.Tensor) -> None:
        if self.steps and step <= self.steps[-1]:
            raise ValueError(f"steps must increase: got {step} after {self.steps[-1]}")
        if self.steps and (list(num_heads), list(ffn_sizes)) != (self.num_heads, self.ffn_sizes):
            raise ValueError("all masks of one search must come from the same model shape")
        self.num_heads, self.ffn_sizes = list(num_heads), list(ffn_sizes)
        if self.head_masks and self.head_masks[-1].device != head_mask.device:
            # a resumed search reloads its history on the host, and records on the gates' device from then on
            self.head_masks = [m.to(head_mask.device) for m in self.head_masks]
            self.ffn_masks = [m.to(ffn_mask.device) for m in self.ffn_masks]
        self.steps.append(step)
        self.head_masks.append(head_mask)
        self.ffn_masks.append(ffn_mask)

    def should_stop(self, step: int) -> bool:
        """The rule on the history as it is (for masks added with `add`)."""
        if self.converged():
            self.stop_reason = "early-bird"
        elif step >= self.search_config.budget:
            self.stop_reason = "budget"
        return self.stop_reason is not None

    def converged(self) -> bool:
        """window 0 (the paper's rule): the newest mask is within epsilon (strictly), heads and FFN, of each of the
        previous `patience` masks. window > 0: the history covers the trailing window of steps, and the masks
        recorded in it forecast a distance under epsilon, heads and FFN, between the newest mask and the one the
        budget's last step would draw (`forecast_distance`). `patience` counts records, so it would make the
        verdict depend on the recording interval: it plays no part in the windowed rule."""
        config = self.search_config
        newest_step = self.steps[-1]
        if not config.window:
            k = config.patience
            if len(self.steps) <= k:
                return False
            return all(((torch.stack(masks[-k - 1 : -1]) ^ masks[-1]).float().mean(dim=1) < config.epsilon).all()
                       for masks in (self.head_masks, self.ffn_masks))
        window = config.window_steps
        n = sum(step >= newest_step - window for step in self.steps[:-1])  # earlier records inside the window
        if n < MIN_WINDOW_RECORDS or self.steps[0] > newest_step - window:
            return False
        # the masks live where the gates do (a GPU in most runs; `_append` keeps the history on one device)
        lags = torch.tensor([newest_step - step for step in self.steps[-n - 1 : -1]], dtype=torch.float64,
                            device=self.head_masks[-1].device)
        left = max(0, config.budget - newest_step)
        for masks in (self.head_masks, self.ffn_masks):
            distances = (torch.stack(masks[-n - 1 : -1]) ^ masks[-1]).double().mean(dim=1)
            if not forecast_distance(lags, distances, left) < config.epsilon:
                return False
        return True

    @property
    def ticket(self) -> Ticket:
        """The newest recorded ticket: the one to draw when the search stops."""
        if self.newest is None and self._newest_scores is not None:
            step, heads, ffn = self._newest_scores
            self.newest = draw_ticket(heads, ffn, self.ticket_config, step=step)
        if self.newest is None:
            raise ValueError("no mask recorded yet")
        return self.newest

    def distance_matrix(self, kind: str = "heads", layer: int | None = None) -> np.ndarray:
        """(n, n) normalised Hamming distances between all recorded masks: the paper's Fig. 1.

        kind: "heads" or "ffn"; layer: one layer's distance instead of the whole model's.
        """
        if kind not in ("heads", "ffn"):
            raise ValueError(f"kind must be 'heads' or 'ffn', got {kind!r}")
        masks, sizes = (self.head_masks, self.num_heads) if kind == "heads" else (self.ffn_masks, self.ffn_sizes)
        if not masks:
            return np.zeros((0, 0))
        m = torch.stack(masks).cpu().double()  # one device for the whole history: `_append` sees to it
        if layer is not None:
            start = sum(sizes[:layer])
            m = m[:, start : start + sizes[layer]]
        # Hamming distance of 0/1 vectors by one matrix product: |a| + |b| - 2 a.b
        counts = m.sum(dim=1)
        distance = (counts[:, None] + counts[None, :] - 2 * m @ m.T) / m.shape[1]
        return distance.clamp_min(0).numpy()

    def state_dict(self) -> dict:
        """Everything needed to continue the search after a restart, JSON-serialisable and compact."""
        return {
            "steps": self.steps,
            "stop_reason": self.stop_reason,
            "num_heads": self.num_heads,
            "ffn_sizes": self.ffn_sizes,
            "head_masks": [_pack(m.cpu()) for m in self.head_masks],
            "ffn_masks": [_pack(m.cpu()) for m in self.ffn_masks],
            "newest": self.ticket.to_dict() if self.steps else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.steps = list(state["steps"])
        self.stop_reason = state["stop_reason"]
        self.num_heads, self.ffn_sizes = list(state["num_heads"]), list(state["ffn_sizes"])
        self.head_masks = [_unpack(m, sum(self.num_heads)) for m in state["head_masks"]]
        self.ffn_masks = [_unpack(m, sum(self.ffn_sizes)) for m in state["ffn_masks"]]
        self.newest = None if state["newest"] is None else Ticket.from_dict(state["newest"])
        self._newest_scores = None

    to_dict = state_dict  # mask_history.json holds exactly the search state


@dataclass
class SearchResult:
    ticket: Ticket
    history: EarlyBird
    steps: int
    losses: list[float]


def search(
    model: nn.Module,
    batches: Iterable[dict],
    optimizer: torch.optim.Optimizer,
    *,
    ticket_config: TicketConfig | None = None,
    search_config: SearchConfig,
    gate_config: GateConfig | None = None,
    lr_scheduler=None,
    loss_fn: Callable[[nn.Module, dict], torch.Tensor] | None = None,
) -> SearchResult:
    """Train `model` (already gated, optimizer covering its gates) with loss + L1 until the early bird.

    `batches` yields model keyword arguments; by default the loss is `model(**batch).loss`. The batches
    are cycled if they run out before the search stops.
    """
    gates = get_gates(model)
    tracker = EarlyBird(ticket_config or TicketConfig(), search_config)
    loss_fn = loss_fn or (lambda m, b: m(**b).loss)
    losses: list[float] = []
    model.train()
    step = 0
    while True:
        seen_any = False
        for batch in batches:
            seen_any = True
            loss = loss_fn(model, batch)
            loss.backward()
            add_penalty_gradient(gates, gate_config)
            optimizer.step()
            if lr_scheduler is not None:
                lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            losses.append(loss.item())
            if tracker.record(step, gates):
                return SearchResult(tracker.ticket, tracker, step, losses)
        if not seen_any:
            raise ValueError("search got no batches")


def run_search(model: nn.Module, dataset, collate_fn: Callable, train_config, search_config: SearchConfig,
               ticket_config: TicketConfig, gate_config: GateConfig, accelerator, stage_accelerator, folder, *,
               wrap: Callable[[nn.Module], nn.Module] | None = None, optimizer_fn=None, budget=None) -> tuple[Ticket, dict]:
    """The search stage of a run, the same for fine-tuning and pre-training: gates on `model`, training with loss
    + L1 penalty until the early bird (or the budget), the ticket drawn and shared by every process, and
    ticket.json, mask_history.json and search.json written to the run folder; a run that has them reads them back
    instead. `wrap` puts the gated model in the module that computes the loss (pre-training's masked-LM head);
    `budget` may pause the stage (see train.StepBudget). Returns the ticket and search.json's content."""
    from .runs import broadcast_ticket, remove_checkpoint
    from .train import make_optimizer, train_stage

    done = folder.read_json("search.json")
    if done is None:
        logger.info("stage: search (gates + L1, early-bird stop)")
        gates = add_gates(model)
        tracker = EarlyBird(ticket_config, search_config)

        def penalized_optimizer(trained: nn.Module) -> torch.optim.Optimizer:
            build = optimizer_fn or (lambda m: make_optimizer(m, train_config, stage_accelerator.device))
            return penalize(build(trained), gates, gate_config)

        result = train_stage(
            "search", wrap(model) if wrap else model, dataset, collate_fn, train_config, stage_accelerator,
            checkpoint_dir=folder.path / "search_checkpoint", on_step=lambda step, _: tracker.record(step, gates),
            tracker=tracker, optimizer_fn=penalized_optimizer, budget=budget,
        )
        ticket, agreed = broadcast_ticket(tracker.ticket, accelerator)
        # which early-bird rule ran: "forecast" is the windowed rule since it forecasts the budget's ticket
        rule = "forecast" if search_config.window else "paper"
        done = {"stage": {**result.summary(), "budget": search_config.budget, "early_bird_rule": rule},
                "losses": result.losses,
                "step_times": result.step_times, "processes": accelerator.num_processes,
                "ranks_drew_same_ticket": agreed}
        folder.write_json("ticket.json", ticket.to_dict())
        folder.write_json("mask_history.json", tracker.to_dict())
        folder.write_json("search.json", done)
        accelerator.wait_for_everyone()
        remove_checkpoint(folder.path / "search_checkpoint", accelerator)
    return Ticket.from_dict(folder.read_json("ticket.json")), done
