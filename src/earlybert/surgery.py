"""Surgery on stock transformers modules: slice Linear layers to kept indices and fix the head attributes.

Per layer: Q/K/V lose the output rows of dropped heads, W^O the matching input columns, W1 the rows and bias of
dropped neurons, W2 the matching columns. The head count the attention module keeps is updated; the per-head
width is not (heads are dropped, not narrowed). Used by pruning (a ticket's indices) and by the slim model
classes (the first heads and neurons, as placeholders before from_pretrained loads the weights).

transformers' `prune_linear_layer` is not used: it rebuilds the layer in float32 whatever the model's dtype.
Slicing the parameters in place keeps dtype, device, requires_grad and the module objects themselves.
"""

from __future__ import annotations

import torch
from torch import nn

from .archs import blocks, get_arch, head_dim


@torch.no_grad()
def _keep(linear: nn.Linear, index: torch.Tensor, dim: int) -> None:
    """Keep only `index` along `dim` of `linear` (0: output features, 1: input features)."""
    index = index.to(linear.weight.device)
    linear.weight = nn.Parameter(
        linear.weight.index_select(dim, index).contiguous(), requires_grad=linear.weight.requires_grad
    )
    if dim == 0:
        if linear.bias is not None:
            linear.bias = nn.Parameter(linear.bias[index].contiguous(), requires_grad=linear.bias.requires_grad)
        linear.out_features = len(index)
    else:
        linear.in_features = len(index)


def _head_rows(kept_heads: list[int], dim: int) -> torch.Tensor:
    heads = torch.as_tensor(kept_heads, dtype=torch.long)
    return (heads[:, None] * dim + torch.arange(dim)).flatten()


def slice_layers(model: nn.Module, heads: list[list[int]], ffn: list[list[int]]) -> None:
    """Slice every block to the kept head and FFN neuron indices of its layer (`heads[l]`, `ffn[l]`) and fix the
    attention modules' shape attributes; leaves the config alone."""
    arch = get_arch(model)
    d = head_dim(model)
    for block, kept_heads, kept_ffn in zip(blocks(model), heads, ffn):
        rows = _head_rows(kept_heads, d)
        for path in (arch.query, arch.key, arch.value):
            _keep(block.get_submodule(path), rows, dim=0)
        _keep(block.get_submodule(arch.attn_output), rows, dim=1)
        neurons = torch.as_tensor(kept_ffn, dtype=torch.long)
        _keep(block.get_submodule(arch.ffn_in), neurons, dim=0)
        _keep(block.get_submodule(arch.ffn_out), neurons, dim=1)
        attention = block.get_submodule(arch.attention)
        setattr(attention, arch.head_count_attr, len(kept_heads))
        if arch.head_width_attr is not None:
            setattr(attention, arch.head_width_attr, len(kept_heads) * d)
