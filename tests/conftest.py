"""Tiny random models of every supported family and head class (hidden 32, 2 layers, 4 heads, FFN 37)."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, DistilBertConfig, ElectraConfig, RobertaConfig

from earlybert.slim import AUTO_CLASSES

VOCAB = 99


def tiny_config(family: str, attn: str = "eager", **overrides):
    common = dict(vocab_size=VOCAB, max_position_embeddings=64, attn_implementation=attn)
    if family == "distilbert":
        return DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=37, **common, **overrides)
    bert_like = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, **common)
    if family == "bert":
        return BertConfig(**bert_like, **overrides)
    if family == "roberta":
        return RobertaConfig(**bert_like, pad_token_id=1, **overrides)
    if family == "electra":  # embedding_size != hidden_size exercises ELECTRA's embeddings_project
        return ElectraConfig(**bert_like, embedding_size=16, **overrides)
    raise ValueError(family)


FAMILIES = ["bert", "roberta", "electra", "distilbert"]


def head_classes(family: str):
    """(Auto class) for each head class transformers offers for this family."""
    config_class = type(tiny_config(family))
    out = []
    for auto in AUTO_CLASSES:
        try:
            auto._model_mapping[config_class]
        except KeyError:
            continue
        out.append(auto)
    return out


FAMILY_HEADS = [
    pytest.param(family, auto, id=f"{family}-{auto.__name__.removeprefix('AutoModel') or 'Base'}")
    for family in FAMILIES
    for auto in head_classes(family)
]


def build(family: str, auto, attn: str = "eager", seed: int = 0):
    overrides = {"is_decoder": True} if auto.__name__ == "AutoModelForCausalLM" else {}
    torch.manual_seed(seed)
    return auto.from_config(tiny_config(family, attn, **overrides)).eval()


def inputs_for(model, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    shape = (2, 3, 9) if "MultipleChoice" in type(model).__name__ else (2, 9)
    ids = torch.randint(3, VOCAB, shape, generator=g)
    mask = torch.ones(shape, dtype=torch.long)
    mask[..., -2:] = 0  # padding exercises the attention mask path
    return {"input_ids": ids, "attention_mask": mask}


def outputs(model, batch) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model(**batch)
    return [t for t in out.to_tuple() if isinstance(t, torch.Tensor)]


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    assert len(a) == len(b) and len(a) > 0
    return max((x.float() - y.float()).abs().max().item() for x, y in zip(a, b))
