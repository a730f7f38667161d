"""Slimming gates (paper Eq. 2-4): one learnable scalar per attention head and per FFN neuron.

The gates are attached by surgery on stock transformers modules, never by editing their modeling code:
a forward pre-hook on W^O scales each head's slice of the concatenated context (Eq. 2), and one on W2
scales each intermediate activation (Eq. 3). Because the hooks sit on the inputs of two nn.Linear layers,
they see the same tensor whatever attention implementation (eager, sdpa, flex, flash) produced it.

The gate parameters live in a `GateSet` registered on the model as `model.earlybert_gates`, so they move
with `.to()`, are found by `model.parameters()` (and therefore by optimizers, DDP and accelerate), and
`remove_gates` takes them away again without a trace.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from .archs import blocks, get_arch, head_dim, layer_shapes

GATES_ATTR = "earlybert_gates"


# The gates' own learning rate. The paper (and its official code) trains them at the model's rate (2e-5): in a
# 0.2-epoch search no gate then moves more than ~1.5e-3 from 1.0, so under bf16 autocast (the GPU default) every
# gate still rounds to exactly 1.0 in the forward pass (bf16 resolves 1 - 3.9e-3 at best): the search then never
# sees the gates it trains. At 1e-3 they move ~0.07. Measured on SST-2 (bench/results/gate_lr_cpu.md, 2 seeds,
# dev accuracy of the slim model): model's rate 83.37 +- 0.49, 1e-3 83.77 +- 0.08, 1e-2 82.57 +- 1.14,
# 5e-2 83.89 +- 1.38: no rate is better beyond the noise of two seeds. Adam moves every gate by about its learning
# rate per step, so the ranking by |c| barely depends on the rate until gates reach 0 (at 5e-2 over half of the
# FFN gates sit near 0 and the mask churns); 1e-3 is the smallest rate the gates are visible at under bf16.
GATE_LR = 1e-3
MODEL_LR = "model"  # GateConfig.lr meaning "the model's learning rate": the paper's setting, exactly


@dataclass
class GateConfig:
    """The gates' optimisation: the L1 penalty of Eq. 4, separately for head and FFN gates (paper: 1e-4 both),
    and their learning rate (a number, or "model" for the model's learning rate as in the paper)."""

    head_l1: float = 1e-4
    ffn_l1: float = 1e-4
    lr: float | str = GATE_LR

    def __post_init__(self):
        for name in ("head_l1", "ffn_l1"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if isinstance(self.lr, str) and self.lr != MODEL_LR:
            try:
                self.lr = float(self.lr)
            except ValueError:
                raise ValueError(f"gate learning rate must be a number or {MODEL_LR!r}, got {self.lr!r}") from None
        if not isinstance(self.lr, str) and not self.lr > 0:
            raise ValueError(f"gate learning rate must be > 0, got {self.lr}")

    def learning_rate(self, model_lr: float) -> float:
        """The gates' learning rate when the model trains at `model_lr`."""
        return model_lr if self.lr == MODEL_LR else float(self.lr)


class GateSet(nn.Module):
    """head[l]: (num_heads_l,) and ffn[l]: (intermediate_size_l,) coefficients, initialised to 1.0."""

    def __init__(self, num_heads: list[int], ffn_sizes: list[int], device=None):
        super().__init__()
        self.head = nn.ParameterList([nn.Parameter(torch.ones(n, device=device)) for n in num_heads])
        self.ffn = nn.ParameterList([nn.Parameter(torch.ones(n, device=device)) for n in ffn_sizes])
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []

    def l1(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum |c_head|, sum |c_ffn|) as differentiable scalars."""
        return sum(g.abs().sum() for g in self.head), sum(g.abs().sum() for g in self.ffn)

    def scores(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Detached float32 CPU copies of the coefficients, for drawing tickets."""
        return [g.detach().float().cpu() for g in self.head], [g.detach().float().cpu() for g in self.ffn]

    @torch.no_grad()
    def zero_pruned(self, ticket) -> None:
        """Set the gates of everything `ticket` prunes to 0 (the masked model that pruning must reproduce)."""
        for gates, kept in ((self.head, ticket.heads), (self.ffn, ticket.ffn)):
            for g, keep in zip(gates, kept):
                mask = torch.zeros_like(g, dtype=torch.bool)
                mask[list(keep)] = True
                g.masked_fill_(~mask, 0.0)

    def extra_repr(self) -> str:
        return f"heads={[len(g) for g in self.head]}, ffn={[len(g) for g in self.ffn]}"


# The hooks are functools.partial objects over module-level functions, not closures: copy.deepcopy of a gated
# model then rebinds them to the copy's own gates (a closure would keep pointing at the original's), and
# torch.save can pickle them.
def _scale_heads(gate: nn.Parameter, dim: int, module: nn.Module, args: tuple):
    # Input of W^O is (..., heads * head_dim), laid out head-major by every supported family's reshape.
    x = args[0]
    return (x * gate.to(x.dtype).repeat_interleave(dim), *args[1:])


def _scale_neurons(gate: nn.Parameter, module: nn.Module, args: tuple):
    x = args[0]
    return (x * gate.to(x.dtype), *args[1:])


def add_gates(model: nn.Module) -> GateSet:
    """Attach head and FFN gates (all 1.0, so outputs are unchanged until they train) and return them.

    Call before wrapping the model (DDP, accelerate.prepare) and before building the optimizer, so the
    gate parameters are part of both. Works on full-size and already slim models.
    """
    arch = get_arch(model)
    if hasattr(model, GATES_ATTR):
        raise ValueError("model already has earlybert gates; call remove_gates(model) first")
    num_heads, ffn_sizes = layer_shapes(model)
    device = next(model.parameters()).device
    gates = GateSet(num_heads, ffn_sizes, device=device)
    d = head_dim(model)
    for block, head_gate, ffn_gate in zip(blocks(model), gates.head, gates.ffn):
        w_o, w_2 = block.get_submodule(arch.attn_output), block.get_submodule(arch.ffn_out)
        gates._hooks.append(w_o.register_forward_pre_hook(functools.partial(_scale_heads, head_gate, d)))
        gates._hooks.append(w_2.register_forward_pre_hook(functools.partial(_scale_neurons, ffn_gate)))
    model.add_module(GATES_ATTR, gates)
    return gates


def get_gates(model: nn.Module) -> GateSet:
    gates = getattr(model, GATES_ATTR, None)
    if gates is None:
        raise ValueError("model has no earlybert gates; call add_gates(model) first")
    return gates


def remove_gates(model: nn.Module, fold: bool = False) -> GateSet:
    """Detach the gates and their hooks and return them.

    fold=False (what the paper's draw-and-retrain needs): the model is left exactly as before `add_gates`.
    fold=True: the gate values are multiplied into the input columns of W^O and W2 first, so the model keeps
    computing what the gated model computed (useful to continue from the searched weights).
    """
    gates = get_gates(model)
    if fold:
        arch = get_arch(model)
        d = head_dim(model)
        with torch.no_grad():
            for block, head_gate, ffn_gate in zip(blocks(model), gates.head, gates.ffn):
                w_o, w_2 = block.get_submodule(arch.attn_output).weight, block.get_submodule(arch.ffn_out).weight
                w_o.mul_(head_gate.to(w_o.dtype).repeat_interleave(d))
                w_2.mul_(ffn_gate.to(w_2.dtype))
    for handle in gates._hooks:
        handle.remove()
    gates._hooks.clear()
    delattr(model, GATES_ATTR)
    return gates


def sparsity_penalty(model_or_gates: nn.Module, config: GateConfig | None = None) -> torch.Tensor:
    """lambda_head * ||c_head||_1 + lambda_ffn * ||c_ffn||_1 (Eq. 4): the penalty's value, for logging. Training
    applies it through its gradient, `add_penalty_gradient`, the same way in every loop."""
    config = config or GateConfig()
    gates = model_or_gates if isinstance(model_or_gates, GateSet) else get_gates(model_or_gates)
    head_l1, ffn_l1 = gates.l1()
    return config.head_l1 * head_l1 + config.ffn_l1 * ffn_l1


@torch.no_grad()
def add_penalty_gradient(model_or_gates: nn.Module, config: GateConfig | None = None,
                         scale: torch.Tensor | float | None = None) -> None:
    """The penalty's gradient, lambda * sign(c), added to the gates' gradients: call it once per optimizer step,
    right before the step (after gradient accumulation, loss unscaling and clipping).

    Every search applies the penalty this way (our stages through an optimizer pre-step hook, `search.search`,
    the Trainer callback), because it is the one point every training loop exposes, Trainer's included (its
    `on_pre_optimizer_step`): the penalty's weight then does not depend on accumulation, on a loss scaler or on
    clipping, which would otherwise shrink it with the task gradient whenever that is large. It equals the
    gradient of `sparsity_penalty` added to the loss whenever no clipping acts. `scale`: the loss scale of
    gradients that are still scaled at this point (the optimizer unscales them in its step)."""
    config = config or GateConfig()
    gates = model_or_gates if isinstance(model_or_gates, GateSet) else get_gates(model_or_gates)
    for params, strength in ((gates.head, config.head_l1), (gates.ffn, config.ffn_l1)):
        for g in params:
            if g.grad is None:
                g.grad = torch.zeros_like(g)
            penalty = torch.sign(g) if scale is None else torch.sign(g) * scale
            g.grad.add_(penalty, alpha=strength)


def penalize(optimizer: torch.optim.Optimizer, model_or_gates: nn.Module,
             config: GateConfig | None = None) -> torch.optim.Optimizer:
    """`optimizer`, with `add_penalty_gradient` run at the start of each of its steps: inside the real step, so
    once per optimizer step and after accumulation, unscaling and clipping, whatever loop drives it."""
    # With fp16, a loss scaler that finds the gradients still scaled hands the scale to an optimizer that unscales
    # inside its step (the fused ones) as `grad_scale`: the penalty must be scaled alike, or it shrinks ~65,536x.
    optimizer.register_step_pre_hook(
        lambda opt, *_: add_penalty_gradient(model_or_gates, config, scale=getattr(opt, "grad_scale", None)))
    return optimizer


def decay_groups(model: nn.Module, weight_decay: float, gate_lr: float | None = None) -> list[dict]:
    """Optimizer parameter groups: weight decay on the weight matrices; none on biases and LayerNorm, as in BERT;
    and, when the model is gated, a third group for the gates: no weight decay (they have their own L1 penalty)
    and their own learning rate `gate_lr` (None: the optimizer's). A scheduler scales every group alike."""
    decay, no_decay, gates = [], [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (gates if GATES_ATTR in name.split(".") else no_decay if p.ndim < 2 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if gates:
        groups.append({"params": gates, "weight_decay": 0.0, **({} if gate_lr is None else {"lr": gate_lr})})
    return groups


def search_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.0, config: GateConfig | None = None,
                     **adamw_kwargs) -> torch.optim.Optimizer:
    """AdamW for the search of a gated model: the model at `lr`, the gates at their own rate (GateConfig.lr).
    For loops of your own, and for `transformers.Trainer(..., optimizers=(search_optimizer(model, lr), None))`."""
    config = config or GateConfig()
    return torch.optim.AdamW(decay_groups(model, weight_decay, config.learning_rate(lr)), lr=lr, **adamw_kwargs)
