"""The searching stage (paper Sec. 3.2-3.3): train model + gates with the L1 penalty until the ticket emerges.

`EarlyBird` is the part every training loop needs: call `record(step, gates)` once per optimizer step (not
per micro-batch); it draws the ticket that *would* be drawn now, keeps the history (the data of Fig. 1) and
returns True when the search should stop, either because the ticket has converged (the early-bird rule of
You et al. 2020: the newest mask is within `epsilon` of each of the previous `patience` masks) or because
the step budget is spent. `search()` is a complete minimal loop built on it, for users without their own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from .gates import GateConfig, GateSet, get_gates, sparsity_penalty
from .ticket import Ticket, TicketConfig, draw_ticket, mask_distance


@dataclass
class SearchConfig:
    """When the search stops.

    epsilon, patience: the early-bird rule; stop once the newest mask is within normalised Hamming
        distance `epsilon` (strictly less, heads and FFN alike) of each of the previous `patience` masks.
    max_steps: hard budget in optimizer steps; or
    max_epoch_fraction + steps_per_epoch: the budget as a fraction of an epoch (paper: 0.2 for fine-tuning).
        When both budgets are given the smaller wins; at least one must be given so a search always ends.
    record_every: draw and record a mask every this many optimizer steps.
    """

    epsilon: float = 0.1
    patience: int = 5
    max_steps: int | None = None
    max_epoch_fraction: float | None = None
    steps_per_epoch: int | None = None
    record_every: int = 1

    def __post_init__(self):
        if not 0 <= self.epsilon <= 1:
            raise ValueError(f"epsilon must be in [0, 1], got {self.epsilon}")
        if self.patience < 1:
            raise ValueError(f"patience must be >= 1, got {self.patience}")
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


@dataclass
class EarlyBird:
    """Mask history and early-bird stopping for one search."""

    ticket_config: TicketConfig = field(default_factory=TicketConfig)
    search_config: SearchConfig = field(default_factory=lambda: SearchConfig(max_steps=1000))
    steps: list[int] = field(default_factory=list)
    tickets: list[Ticket] = field(default_factory=list)
    stop_reason: str | None = None  # "early-bird" or "budget" once stopped

    def record(self, step: int, gates: GateSet | nn.Module) -> bool:
        """Draw and keep the current ticket at optimizer step `step` (1-based); True when the search must stop."""
        if step % self.search_config.record_every == 0 or step >= self.search_config.budget:
            gates = gates if isinstance(gates, GateSet) else get_gates(gates)
            self.add(step, draw_ticket(*gates.scores(), self.ticket_config, step=step))
        return self.should_stop(step)

    def add(self, step: int, ticket: Ticket) -> None:
        if self.steps and step <= self.steps[-1]:
            raise ValueError(f"steps must increase: got {step} after {self.steps[-1]}")
        if self.tickets:  # only the newest ticket keeps its coefficients: hundreds of BERT-size copies add up
            self.tickets[-1].head_scores = self.tickets[-1].ffn_scores = None
        self.steps.append(step)
        self.tickets.append(ticket)

    def should_stop(self, step: int) -> bool:
        if self.converged():
            self.stop_reason = "early-bird"
        elif step >= self.search_config.budget:
            self.stop_reason = "budget"
        return self.stop_reason is not None

    def converged(self) -> bool:
        k, eps = self.search_config.patience, self.search_config.epsilon
        if len(self.tickets) <= k:
            return False
        newest = self.tickets[-1]
        for previous in self.tickets[-1 - k : -1]:
            d = mask_distance(newest, previous)
            if d.heads >= eps or d.ffn >= eps:
                return False
        return True

    @property
    def ticket(self) -> Ticket:
        """The newest recorded ticket: the one to draw when the search stops."""
        if not self.tickets:
            raise ValueError("no mask recorded yet")
        return self.tickets[-1]

    def distance_matrix(self, kind: str = "heads", layer: int | None = None) -> np.ndarray:
        """(n, n) normalised Hamming distances between all recorded masks: the paper's Fig. 1.

        kind: "heads" or "ffn"; layer: one layer's distance instead of the whole model's.
        """
        if kind not in ("heads", "ffn"):
            raise ValueError(f"kind must be 'heads' or 'ffn', got {kind!r}")
        n = len(self.tickets)
        out = np.zeros((n, n))
        for i in range(n):
            for j in range(i + 1, n):
                d = mask_distance(self.tickets[i], self.tickets[j])
                value = getattr(d, kind) if layer is None else getattr(d, f"{kind}_per_layer")[layer]
                out[i, j] = out[j, i] = value
        return out

    def state_dict(self) -> dict:
        """Everything needed to continue the search after a restart (masks, not coefficients)."""
        return self.to_dict()

    def load_state_dict(self, state: dict) -> None:
        self.steps = list(state["steps"])
        self.stop_reason = state["stop_reason"]
        self.tickets = [Ticket.from_dict(t) for t in state["tickets"]]

    def to_dict(self) -> dict:
        """History without the per-step coefficients (the tickets' masks and steps suffice for Fig. 1)."""
        tickets = [{k: v for k, v in t.to_dict().items() if not k.endswith("_scores")} for t in self.tickets]
        return {"steps": self.steps, "stop_reason": self.stop_reason, "tickets": tickets}


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
            (loss + sparsity_penalty(gates, gate_config)).backward()
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
