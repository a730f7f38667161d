"""Where each encoder family keeps the pieces EarlyBERT gates and slices.

Adding a family means adding one `Arch` entry to `ARCHS` and nothing else: gates, ticket drawing, pruning,
FLOP counting and save/reload all read these paths. Paths are dotted attribute paths; `layers` starts at the
base model (`model.base_model`), the others at one transformer block.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Arch:
    model_type: str  # transformers' `config.model_type` of the full-size family
    layers: str  # base model -> nn.ModuleList of transformer blocks
    attention: str  # block -> self-attention module that holds the head count
    query: str  # block -> W^Q
    key: str  # block -> W^K
    value: str  # block -> W^V
    attn_output: str  # block -> W^O, whose input is the concatenated per-head context
    ffn_in: str  # block -> W1 (hidden -> intermediate)
    ffn_out: str  # block -> W2 (intermediate -> hidden)
    head_count_attr: str  # attribute of `attention` holding its number of heads
    head_dim_attr: str  # attribute of `attention` holding the per-head width
    head_width_attr: str | None  # attribute of `attention` holding heads * head_dim, if it keeps one
    config_num_heads: str  # config field: heads per layer
    config_intermediate: str  # config field: FFN width
    config_num_layers: str  # config field: number of blocks
    mlm_head: str | None = None  # attribute of the family's *ForMaskedLM holding its prediction head (pre-training)
    position_offset: int = 0  # position ids start here (RoBERTa: padding_idx + 1), so the table holds that many fewer


_BERT_LIKE = dict(
    layers="encoder.layer",
    attention="attention.self",
    query="attention.self.query",
    key="attention.self.key",
    value="attention.self.value",
    attn_output="attention.output.dense",
    ffn_in="intermediate.dense",
    ffn_out="output.dense",
    head_count_attr="num_attention_heads",
    head_dim_attr="attention_head_size",
    head_width_attr="all_head_size",
    config_num_heads="num_attention_heads",
    config_intermediate="intermediate_size",
    config_num_layers="num_hidden_layers",
)

ARCHS: dict[str, Arch] = {
    "bert": Arch(model_type="bert", mlm_head="cls", **_BERT_LIKE),
    "roberta": Arch(model_type="roberta", mlm_head="lm_head", position_offset=2, **_BERT_LIKE),
    "electra": Arch(model_type="electra", **_BERT_LIKE),
    "distilbert": Arch(
        model_type="distilbert",
        layers="transformer.layer",
        attention="attention",
        query="attention.q_lin",
        key="attention.k_lin",
        value="attention.v_lin",
        attn_output="attention.out_lin",
        ffn_in="ffn.lin1",
        ffn_out="ffn.lin2",
        head_count_attr="n_heads",
        head_dim_attr="attention_head_size",
        head_width_attr=None,
        config_num_heads="n_heads",
        config_intermediate="hidden_dim",
        config_num_layers="n_layers",
    ),
}

SLIM_PREFIX = "earlybert_"  # model_type of a pruned model: "earlybert_bert", "earlybert_roberta", ...


def family_of(model_type: str) -> str:
    """The full-size family a (possibly slim) model_type belongs to."""
    return model_type[len(SLIM_PREFIX) :] if model_type.startswith(SLIM_PREFIX) else model_type


def get_arch(model_or_type: nn.Module | str) -> Arch:
    """The adapter for a model (any head class) or a model_type; TypeError names what is supported."""
    if isinstance(model_or_type, str):
        model_type = model_or_type
    else:
        config = getattr(model_or_type, "config", None)
        model_type = getattr(config, "model_type", None) or type(model_or_type).__name__
    arch = ARCHS.get(family_of(model_type))
    if arch is None:
        raise TypeError(
            f"earlybert does not support model type {model_type!r}; supported: {', '.join(sorted(ARCHS))}"
        )
    return arch


def max_positions(config) -> int | None:
    """The longest sequence a config's position table holds (None when it has none, e.g. relative positions)."""
    size = getattr(config, "max_position_embeddings", None)
    if size is None:
        return None
    arch = ARCHS.get(family_of(getattr(config, "model_type", "")))
    return size - (arch.position_offset if arch else 0)


def mlm_head(model_type: str) -> str:
    """The prediction head's attribute on a family's *ForMaskedLM; TypeError for families pre-training lacks."""
    arch = ARCHS.get(family_of(model_type))
    if arch is None or arch.mlm_head is None:
        supported = ", ".join(name for name, a in ARCHS.items() if a.mlm_head)
        raise TypeError(f"pre-training supports {supported}; got model type {model_type!r}")
    return arch.mlm_head


def blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of any head class of a supported family, in order."""
    arch = get_arch(model)
    return list(model.base_model.get_submodule(arch.layers))


def head_dim(model: nn.Module) -> int:
    arch = get_arch(model)
    return int(getattr(blocks(model)[0].get_submodule(arch.attention), arch.head_dim_attr))


def layer_shapes(model: nn.Module) -> tuple[list[int], list[int]]:
    """(heads per layer, FFN width per layer), read from the weights themselves so slim models report truly."""
    arch = get_arch(model)
    d = head_dim(model)
    heads, ffn = [], []
    for block in blocks(model):
        heads.append(block.get_submodule(arch.query).out_features // d)
        ffn.append(block.get_submodule(arch.ffn_in).out_features)
    return heads, ffn


def config_layer_shapes(config) -> tuple[list[int], list[int]]:
    """(heads per layer, FFN width per layer) that a (possibly slim) config describes, without building it."""
    arch = get_arch(config.model_type)
    n_layers = getattr(config, arch.config_num_layers)
    heads = getattr(config, "layer_num_heads", None) or [getattr(config, arch.config_num_heads)] * n_layers
    ffn = getattr(config, "layer_intermediate_sizes", None) or [getattr(config, arch.config_intermediate)] * n_layers
    return list(heads), list(ffn)
