"""LayerDrop baseline (Fan et al. 2019, as compared in the paper's Table 2).

Training: each transformer block is skipped with probability `p` at every step (the whole batch takes the
identity path), which trains the model to survive losing layers and saves about `p` of the encoder's compute.
Afterwards one third of the blocks are removed for good (every third block, the "every other layer"
strategy of Fan et al. generalised to a 1/3 rate), giving a model of about EarlyBERT's size.
"""

from __future__ import annotations

import torch
from torch import nn

from .archs import get_arch


class LayerDropBlock(nn.Module):
    """Wraps one block; in training, returns its input unchanged with probability p."""

    def __init__(self, block: nn.Module, p: float):
        super().__init__()
        self.block, self.p = block, p
        self.train(block.training)  # a new module starts in training mode; follow the wrapped block

    def forward(self, hidden_states, *args, **kwargs):
        # torch.rand draws from the global generator, which accelerate seeds alike on every process and saves
        # with each checkpoint: all ranks skip the same blocks, and a resumed run skips what the killed one would.
        if self.training and torch.rand(()) < self.p:
            return hidden_states
        return self.block(hidden_states, *args, **kwargs)


def _layer_list(model: nn.Module) -> nn.ModuleList:
    return model.base_model.get_submodule(get_arch(model).layers)


def add_layerdrop(model: nn.Module, p: float) -> None:
    if not 0 <= p < 1:
        raise ValueError(f"LayerDrop rate must be in [0, 1), got {p}")
    layers = _layer_list(model)
    for i, block in enumerate(layers):
        layers[i] = LayerDropBlock(block, p)


def remove_layerdrop(model: nn.Module) -> None:
    layers = _layer_list(model)
    for i, block in enumerate(layers):
        if isinstance(block, LayerDropBlock):
            layers[i] = block.block


def drop_every_third_layer(model: nn.Module) -> list[int]:
    """Remove blocks 2, 5, 8, ... for good; returns the kept indices. The config follows, so it saves and reloads."""
    arch = get_arch(model)
    layers = _layer_list(model)
    kept = [i for i in range(len(layers)) if i % 3 != 2]
    parent_path, _, attr = arch.layers.rpartition(".")
    parent = model.base_model.get_submodule(parent_path) if parent_path else model.base_model
    setattr(parent, attr, nn.ModuleList([layers[i] for i in kept]))
    setattr(model.config, arch.config_num_layers, len(kept))
    for slim_field in ("layer_num_heads", "layer_intermediate_sizes"):
        if getattr(model.config, slim_field, None) is not None:
            setattr(model.config, slim_field, [getattr(model.config, slim_field)[i] for i in kept])
    return kept
