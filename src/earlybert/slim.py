"""Slim models that save and reload by themselves.

transformers' configs cannot say "layer 3 has 8 heads and 1,530 FFN neurons", so `from_pretrained` would
rebuild full-size layers and refuse the smaller weights. For every supported family this module defines a
slim config (model_type "earlybert_<family>", the family's config plus the per-layer shapes) and, for every
head class of the family, a slim model class that builds the stock model and then shrinks each layer to those
shapes. They are registered with transformers' Auto classes when earlybert is imported, so

    import earlybert
    AutoModelForSequenceClassification.from_pretrained(slim_dir)

rebuilds a pruned model from safetensors alone, with no remote code. Full-size models are not affected.
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForMultipleChoice,
    AutoModelForNextSentencePrediction,
    AutoModelForPreTraining,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from .archs import ARCHS, SLIM_PREFIX, blocks, family_of, get_arch
from .surgery import slice_layers

AUTO_CLASSES = (
    AutoModel,
    AutoModelForPreTraining,
    AutoModelForMaskedLM,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoModelForQuestionAnswering,
    AutoModelForTokenClassification,
    AutoModelForMultipleChoice,
    AutoModelForNextSentencePrediction,
)

SLIM_CONFIGS: dict[str, type] = {}  # family -> slim config class
SLIM_MODELS: dict[type, type] = {}  # stock model class -> slim model class


def _make_slim_config_class(family: str) -> type:
    base = CONFIG_MAPPING[family]
    name = f"Slim{base.__name__}"
    namespace = {
        "__module__": __name__,
        "__qualname__": name,
        "__doc__": f"{base.__name__} plus the per-layer shapes of an EarlyBERT ticket.",
        "model_type": SLIM_PREFIX + family,
        "__annotations__": {"layer_num_heads": list[int] | None, "layer_intermediate_sizes": list[int] | None},
        "layer_num_heads": None,  # kept attention heads in each layer
        "layer_intermediate_sizes": None,  # kept FFN neurons in each layer
    }
    return strict(type(name, (base,), namespace))


def shrink_to_config(model: nn.Module) -> None:
    """Resize a freshly built stock model to the per-layer shapes in its slim config.

    The weights are placeholders (the first heads/neurons of the initialised full layers): from_pretrained
    overwrites every one of them, and from_config gets a randomly initialised slim model.
    """
    config = model.config
    heads, ffn = config.layer_num_heads, config.layer_intermediate_sizes
    if heads is None and ffn is None:
        return
    arch = get_arch(model)
    n_layers = getattr(config, arch.config_num_layers)
    full_heads, full_ffn = getattr(config, arch.config_num_heads), getattr(config, arch.config_intermediate)
    if heads is None or ffn is None or len(heads) != n_layers or len(ffn) != n_layers:
        raise ValueError(
            f"slim config needs layer_num_heads and layer_intermediate_sizes with {n_layers} entries each"
        )
    if not all(1 <= h <= full_heads for h in heads) or not all(1 <= f <= full_ffn for f in ffn):
        raise ValueError(
            f"slim config shapes out of range: heads {heads} (1..{full_heads}), FFN {ffn} (1..{full_ffn})"
        )
    slice_layers(model, [list(range(h)) for h in heads], [list(range(f)) for f in ffn])


def _make_slim_model_class(base: type, config_class: type) -> type:
    def __init__(self, config, *args, **kwargs):
        base.__init__(self, config, *args, **kwargs)
        shrink_to_config(self)

    name = f"Slim{base.__name__}"
    return type(
        name,
        (base,),
        {"__module__": __name__, "__qualname__": name, "config_class": config_class, "__init__": __init__},
    )


def _register(family: str) -> None:
    config_class = _make_slim_config_class(family)
    globals()[config_class.__name__] = config_class  # importable by name, so configs pickle
    AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    SLIM_CONFIGS[family] = config_class
    base_config = CONFIG_MAPPING[family]
    for auto in AUTO_CLASSES:
        try:
            base = auto._model_mapping[base_config]
        except KeyError:
            continue  # this family has no such head
        if base not in SLIM_MODELS:
            slim = _make_slim_model_class(base, config_class)
            globals()[slim.__name__] = slim
            SLIM_MODELS[base] = slim
        auto.register(config_class, SLIM_MODELS[base], exist_ok=True)


for _family in ARCHS:
    _register(_family)


def make_slim(model: nn.Module, layer_num_heads: list[int], layer_intermediate_sizes: list[int]) -> None:
    """Turn an already sliced model's config (and class) into the slim ones recording these shapes.

    The config object is converted in place because the attention modules hold references to it (they read
    the attention implementation from it at every call).
    """
    if len(layer_num_heads) != len(blocks(model)):
        raise ValueError("one head count per layer needed")
    config = model.config
    config.__class__ = SLIM_CONFIGS[family_of(config.model_type)]
    config.layer_num_heads = list(layer_num_heads)
    config.layer_intermediate_sizes = list(layer_intermediate_sizes)
    slim_class = SLIM_MODELS.get(type(model))
    if slim_class is not None:
        model.__class__ = slim_class
