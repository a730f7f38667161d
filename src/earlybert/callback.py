"""EarlyBERT inside a `transformers.Trainer`, for people who already train with one: search, draw, slim model.

    gates = earlybert.add_gates(model)            # before building the Trainer (its optimizer must see the gates)
    callback = EarlyBirdCallback(gates)
    Trainer(model=model, args=args, train_dataset=ds, callbacks=[callback]).train()  # stops at the early bird
    ticket, slim = callback.slim_model()           # pretrained weights, same head init, pruned by the ticket
    Trainer(model=slim, args=slim_training_args(args), train_dataset=ds).train()     # 2x the learning rate

The L1 penalty enters as its gradient, lambda * sign(c), added to the gates' gradients once per optimizer step
(`on_pre_optimizer_step`, after Trainer's clipping), as in every search of the package (`gates.add_penalty_gradient`).
With fp16, keep clipping on (the default): it is what unscales the gradients before that point.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import torch
from transformers import TrainerCallback

from .gates import GATES_ATTR, GateConfig, GateSet, add_penalty_gradient, remove_gates
from .prune import prune
from .search import EarlyBird, SearchConfig
from .ticket import Ticket, TicketConfig

logger = logging.getLogger(__name__)


class EarlyBirdCallback(TrainerCallback):
    def __init__(self, gates: GateSet, ticket_config: TicketConfig | None = None,
                 search_config: SearchConfig | None = None, gate_config: GateConfig | None = None):
        self.gates = gates
        self.gate_config = gate_config or GateConfig()
        self.search_config = search_config
        self.ticket_config = ticket_config or TicketConfig()
        self.tracker: EarlyBird | None = None
        self._model = None
        self._initial_state: dict[str, torch.Tensor] | None = None

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        # The weights the search starts from (the pretrained encoder and the task head as initialised), on the CPU
        # and without the gates: the slim model restarts from exactly these (paper Sec. 3.2), same head init.
        if model is not None and self._initial_state is None:
            self._model = model
            self._initial_state = {name: value.detach().to("cpu", copy=True)
                                   for name, value in model.state_dict().items()
                                   if not name.startswith(GATES_ATTR + ".")}
        # Default budget: 0.2 epoch (the paper's fine-tuning search). An epoch's optimizer steps are counted the
        # way Trainer counts them: its dataloader's batches over the accumulation steps.
        config = self.search_config
        if config is None:
            if train_dataloader is None:
                raise ValueError("EarlyBirdCallback needs a search_config when Trainer has no train dataloader")
            per_epoch = max(1, math.ceil(len(train_dataloader) / args.gradient_accumulation_steps))
            config = SearchConfig(max_epoch_fraction=0.2, steps_per_epoch=per_epoch)
        self.tracker = EarlyBird(self.ticket_config, config)
        self._check_gate_learning_rate(args, kwargs.get("optimizer"))
        if args.fp16 and not args.max_grad_norm:
            # Trainer unscales fp16 gradients only when it clips; otherwise they are still scaled when the penalty
            # joins them, and the optimizer's unscaling divides the penalty by the loss scale (~65,536) too.
            logger.warning("fp16 without gradient clipping: the gates' L1 penalty would be divided by the loss "
                           "scale; set max_grad_norm (Trainer's default 1.0) or train in bf16")

    def _check_gate_learning_rate(self, args, optimizer) -> None:
        """Trainer's own optimizer trains the gates at the model's rate; say how to give them theirs."""
        if optimizer is None:
            return
        wanted = self.gate_config.learning_rate(args.learning_rate)
        gate_ids = {id(p) for p in self.gates.parameters()}
        rates = {group.get("initial_lr", group["lr"]) for group in optimizer.param_groups
                 if any(id(p) in gate_ids for p in group["params"])}
        if rates and rates != {wanted}:
            logger.warning("the gates train at learning rate %s, not their own %g; pass "
                           "optimizers=(earlybert.search_optimizer(model, args.learning_rate), None) to the Trainer, "
                           "or GateConfig(lr='model') for the paper's setting", sorted(rates), wanted)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        add_penalty_gradient(self.gates, self.gate_config)

    def on_step_end(self, args, state, control, **kwargs):
        if self.tracker.record(state.global_step, self.gates):
            control.should_training_stop = True
        return control

    def slim_model(self, model=None) -> tuple[Ticket, torch.nn.Module]:
        """After the search: the ticket, and the model to train, i.e. the searched model with its gates removed,
        reset to the weights the search started from (pretrained encoder, same task-head initialisation) and
        pruned by the ticket. The model is changed in place (no second copy in memory) and returned.

        Give it to a new Trainer (its optimizer must be built for the slim parameters), with `slim_training_args`
        for the paper's 2x learning rate. The result saves with `save_pretrained` and reloads with the Auto
        classes after `import earlybert`."""
        if self.tracker is None or not self.tracker.steps:
            raise ValueError("the search has not run: call trainer.train() with this callback first")
        model = model if model is not None else self._model
        if model is None or self._initial_state is None:
            raise ValueError("no model seen at the start of training; pass the searched model")
        ticket = self.tracker.ticket
        remove_gates(model)
        model.load_state_dict(self._initial_state)
        prune(model, ticket)
        return ticket, model


def slim_training_args(args, lr_scale: float = 2.0, **changes):
    """A copy of the search's TrainingArguments for training the slim model: `lr_scale` times the learning rate
    (2 for GLUE in the paper, 1 for SQuAD), with any other field changed by keyword (e.g. num_train_epochs=2,
    output_dir=...)."""
    if lr_scale <= 0:
        raise ValueError(f"lr_scale must be > 0, got {lr_scale}")
    return dataclasses.replace(args, learning_rate=args.learning_rate * lr_scale, **changes)
