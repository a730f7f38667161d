"""Physical pruning: remove a ticket's pruned heads and FFN neurons from the weight matrices.

Per layer: Q/K/V lose the output rows of pruned heads, W^O the matching input columns, W1 the rows and bias
of pruned neurons, W2 the matching columns. The head count the attention module keeps is updated; the
per-head width is not (heads are dropped, not narrowed). Finally the config becomes the family's slim config
(`earlybert.slim`) with the per-layer shapes in it, so `save_pretrained` / `AutoModel*.from_pretrained`
rebuild the slim model by themselves.

transformers' `prune_linear_layer` is not used: it rebuilds the layer in float32 whatever the model's dtype.
Slicing the parameters in place keeps dtype, device, requires_grad and the module objects themselves.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from .archs import blocks, config_layer_shapes, get_arch, head_dim, layer_shapes
from .gates import GATES_ATTR
from .slim import make_slim
from .ticket import Ticket

logger = logging.getLogger(__name__)


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


def check_ticket_fits(model_or_config, ticket: Ticket) -> None:
    """ValueError unless `ticket` was drawn for a model of this per-layer shape (a model or its config)."""
    if isinstance(model_or_config, nn.Module):
        num_heads, ffn_sizes = layer_shapes(model_or_config)
    else:
        num_heads, ffn_sizes = config_layer_shapes(model_or_config)
    if ticket.num_heads != num_heads or ticket.ffn_sizes != ffn_sizes:
        raise ValueError(
            f"ticket was drawn for a model with heads {ticket.num_heads} and FFN {ticket.ffn_sizes} per layer, "
            f"but this model has heads {num_heads} and FFN {ffn_sizes}"
        )


def slice_layers(model: nn.Module, ticket: Ticket) -> None:
    """Slice every block to `ticket` and fix the shape attributes; leaves the config alone."""
    arch = get_arch(model)
    d = head_dim(model)
    for block, kept_heads, kept_ffn in zip(blocks(model), ticket.heads, ticket.ffn):
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


def prune(model: nn.Module, ticket: Ticket) -> nn.Module:
    """Remove what `ticket` prunes from `model`, in place; returns the same (now slim) model.

    Remove gates first (`remove_gates`), and rebuild the optimizer afterwards: the parameters are new.
    """
    get_arch(model)
    if hasattr(model, GATES_ATTR):
        raise ValueError("remove the gates (earlybert.remove_gates) before pruning")
    check_ticket_fits(model, ticket)
    slice_layers(model, ticket)
    make_slim(model, ticket.kept_heads, ticket.kept_ffn)
    for layer, (h, f) in enumerate(zip(ticket.kept_heads, ticket.kept_ffn)):
        logger.debug("layer %d: kept %d/%d heads, %d/%d FFN neurons", layer, h, ticket.num_heads[layer], f,
                     ticket.ffn_sizes[layer])
    logger.info("pruned to %s", ticket.summary())
    return model
