"""FLOPs of a training step, counted by torch's FlopCounterMode on a real forward and backward.

Counting with torch rather than by formula keeps the count honest for any head class, sequence length and
slim shape: what is counted is what the model runs. "linear" is the matrix-multiply work of nn.Linear layers
(aten.mm / aten.addmm), the part pruning shrinks; "total" adds attention scores, softmax-free matmuls and
everything else torch has a formula for.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

_LINEAR_OPS = {"mm", "addmm"}


def count_flops(model: nn.Module, batch: dict, backward: bool = True) -> dict[str, int]:
    """{'linear': ..., 'total': ...} FLOPs of forward (+ backward) of `model(**batch)`."""
    counter = FlopCounterMode(display=False)
    # Count in training mode: in eval mode sdpa takes a fused CPU kernel that FlopCounterMode has no formula
    # for, and attention would silently count as zero. fork_rng keeps the dropout draws from moving the
    # caller's random state.
    was_training = model.training
    model.train()
    try:
        with torch.random.fork_rng(devices=[]), counter:
            out = model(**batch)
            if backward:  # the loss when the batch has labels, else the logits: backward through the whole model
                target = getattr(out, "loss", None)
                if target is None:
                    target = out.logits if getattr(out, "logits", None) is not None else out[0]
                target.float().sum().backward()
    finally:
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    by_op = counter.get_flop_counts()["Global"]
    linear = sum(v for op, v in by_op.items() if op.__name__.split(".")[0] in _LINEAR_OPS)
    return {"linear": int(linear), "total": int(sum(by_op.values()))}
