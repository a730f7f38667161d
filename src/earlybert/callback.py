"""EarlyBERT's search inside a `transformers.Trainer`, for people who already train with one.

    gates = earlybert.add_gates(model)            # before building the Trainer (its optimizer must see the gates)
    callback = EarlyBirdCallback(gates)
    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[callback])
    trainer.train()                                # stops by itself when the ticket has emerged
    ticket = callback.tracker.ticket

The L1 penalty enters as its gradient, lambda * sign(c), added to the gates' gradients once per optimizer step
(`on_pre_optimizer_step`): Trainer owns the loss, and this keeps the penalty's weight independent of gradient
accumulation. Trainer clips gradients before this event, so the penalty gradient itself is not clipped.
"""

from __future__ import annotations

import math

import torch
from transformers import TrainerCallback

from .gates import GateConfig, GateSet
from .search import EarlyBird, SearchConfig
from .ticket import TicketConfig


class EarlyBirdCallback(TrainerCallback):
    def __init__(self, gates: GateSet, ticket_config: TicketConfig | None = None,
                 search_config: SearchConfig | None = None, gate_config: GateConfig | None = None):
        self.gates = gates
        self.gate_config = gate_config or GateConfig()
        self.search_config = search_config
        self.ticket_config = ticket_config or TicketConfig()
        self.tracker: EarlyBird | None = None

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        # Default budget: 0.2 epoch (the paper's fine-tuning search). An epoch's optimizer steps are counted the
        # way Trainer counts them: its dataloader's batches over the accumulation steps.
        config = self.search_config
        if config is None:
            if train_dataloader is None:
                raise ValueError("EarlyBirdCallback needs a search_config when Trainer has no train dataloader")
            per_epoch = max(1, math.ceil(len(train_dataloader) / args.gradient_accumulation_steps))
            config = SearchConfig(max_epoch_fraction=0.2, steps_per_epoch=per_epoch)
        self.tracker = EarlyBird(self.ticket_config, config)

    @torch.no_grad()
    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        for gates, strength in ((self.gates.head, self.gate_config.head_l1), (self.gates.ffn, self.gate_config.ffn_l1)):
            for g in gates:
                if g.grad is None:
                    g.grad = torch.zeros_like(g)
                g.grad.add_(torch.sign(g), alpha=strength)

    def on_step_end(self, args, state, control, **kwargs):
        if self.tracker.record(state.global_step, self.gates):
            control.should_training_stop = True
        return control
