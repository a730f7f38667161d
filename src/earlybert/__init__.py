"""earlybert: cheaper BERT-family training with structured early-bird lottery tickets.

    import earlybert as eb
    gates = eb.add_gates(model)                      # 1. search: train, eb.add_penalty_gradient(model) each step
    ticket = eb.draw_ticket(*gates.scores())         # 2. draw: 1/3 heads per layer, 40% FFN neurons globally
    eb.remove_gates(model); eb.prune(model, ticket)  # 3. slim model: train it, save_pretrained, reload with Auto*

Importing earlybert registers the slim model classes with transformers' Auto classes, and widens oneDNN's
kernel cache (ONEDNN_PRIMITIVE_CACHE_CAPACITY) unless the environment already sets it.
"""

import os

# oneDNN, PyTorch's CPU backend for bf16 matrix products, keeps its compiled kernels in a cache keyed by shape, 1,024
# entries by default. Batches padded to their longest sequence bring a new set of shapes with nearly every length,
# and a pruned model has a different FFN width in every layer, so a fine-tuning run cycles through more shapes than
# that and rebuilds kernels as it goes: measured on MiniLM with real SST-2 batches, the default cache left the full
# step 3% and the slim step 7% slower than 16,384 entries (bench/results/shape_cache_cpu.md; peak memory did not
# grow). oneDNN reads the capacity once, when it builds its first kernel, so it is set here, on import; importing
# torch first is fine, running a bf16 product first is not. A value the user set, under either of oneDNN's names,
# wins. Results are unchanged: a kernel built again is the same kernel.
ONEDNN_CACHE_CAPACITY = 16384
if not {"ONEDNN_PRIMITIVE_CACHE_CAPACITY", "DNNL_PRIMITIVE_CACHE_CAPACITY"} & set(os.environ):
    os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = str(ONEDNN_CACHE_CAPACITY)

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
    "ONEDNN_CACHE_CAPACITY",
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
