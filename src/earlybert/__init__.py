"""earlybert: cheaper BERT-family training with structured early-bird lottery tickets.

    import earlybert as eb
    gates = eb.add_gates(model)                      # 1. search: train, eb.add_penalty_gradient(model) each step
    ticket = eb.draw_ticket(*gates.scores())         # 2. draw: 1/3 heads per layer, 40% FFN neurons globally
    eb.remove_gates(model); eb.prune(model, ticket)  # 3. slim model: train it, save_pretrained, reload with Auto*

Importing earlybert registers the slim model classes with transformers' Auto classes.
"""

from .archs import ARCHS, Arch, get_arch, layer_shapes
from .flops import count_flops
from .gates import (GateConfig, GateSet, add_gates, add_penalty_gradient, get_gates, remove_gates, search_optimizer,
                    sparsity_penalty)
from .prune import prune
from .search import EarlyBird, SearchConfig, SearchResult, search
from .slim import SLIM_CONFIGS, SLIM_MODELS
from .ticket import (
    MaskDistance,
    Ticket,
    TicketConfig,
    draw_ticket,
    full_ticket,
    mask_distance,
    random_scores_ticket,
    random_ticket,
)

__version__ = "0.1.0"

__all__ = [
    "ARCHS",
    "Arch",
    "EarlyBird",
    "GateConfig",
    "GateSet",
    "MaskDistance",
    "SLIM_CONFIGS",
    "SLIM_MODELS",
    "SearchConfig",
    "SearchResult",
    "Ticket",
    "TicketConfig",
    "add_gates",
    "count_flops",
    "draw_ticket",
    "full_ticket",
    "get_arch",
    "get_gates",
    "layer_shapes",
    "mask_distance",
    "prune",
    "random_scores_ticket",
    "random_ticket",
    "remove_gates",
    "search",
    "search_optimizer",
    "sparsity_penalty",
    "add_penalty_gradient",
]
