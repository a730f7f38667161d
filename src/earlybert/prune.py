"""Physical pruning: remove a ticket's pruned heads and FFN neurons from the model.

The layers are sliced to the ticket's kept indices (`earlybert.surgery`), then the config becomes the family's
slim config (`earlybert.slim`) with the per-layer shapes in it, so `save_pretrained` /
`AutoModel*.from_pretrained` rebuild the slim model by themselves.
"""

from __future__ import annotations

import logging

from torch import nn

from .archs import config_layer_shapes, get_arch, layer_shapes
from .gates import GATES_ATTR
from .slim import make_slim
from .surgery import slice_layers
from .ticket import Ticket

logger = logging.getLogger(__name__)


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


def prune(model: nn.Module, ticket: Ticket) -> nn.Module:
    """Remove what `ticket` prunes from `model`, in place; returns the same (now slim) model.

    Remove gates first (`remove_gates`), and rebuild the optimizer afterwards: the parameters are new.
    """
    get_arch(model)
    if hasattr(model, GATES_ATTR):
        raise ValueError("remove the gates (earlybert.remove_gates) before pruning")
    check_ticket_fits(model, ticket)
    slice_layers(model, ticket.heads, ticket.ffn)
    make_slim(model, ticket.kept_heads, ticket.kept_ffn)
    for layer, (h, f) in enumerate(zip(ticket.kept_heads, ticket.kept_ffn)):
        logger.debug("layer %d: kept %d/%d heads, %d/%d FFN neurons", layer, h, ticket.num_heads[layer], f,
                     ticket.ffn_sizes[layer])
    logger.info("pruned to %s", ticket.summary())
    return model
