"""archs.py holds every per-family fact: the paths EarlyBERT slices, the masked-LM head, the position limit."""

import pytest
import torch
from transformers import AutoModelForMaskedLM

import earlybert as eb
from earlybert.archs import ARCHS, max_positions, mlm_head

from conftest import FAMILIES, build, inputs_for, tiny_config


@pytest.mark.parametrize("family", FAMILIES)
def test_max_positions_is_the_longest_sequence_the_model_embeds(family):
    config = tiny_config(family)
    limit = max_positions(config)
    assert limit == config.max_position_embeddings - (2 if family == "roberta" else 0)
    model = build(family, AutoModelForMaskedLM).eval()
    ids = inputs_for(model)["input_ids"][:1, :1].repeat(1, limit)
    ids[:, 0] = 5  # not the padding id, so every position is a real token
    with torch.no_grad():
        model(input_ids=ids)  # the longest allowed sequence runs
        with pytest.raises(Exception):
            model(input_ids=torch.cat([ids, ids[:, :1]], dim=1))  # one more does not


def test_a_slim_config_keeps_its_familys_limit():
    model = build("roberta", AutoModelForMaskedLM)
    eb.prune(model, eb.random_scores_ticket(*eb.layer_shapes(model), eb.TicketConfig(), 0))
    assert model.config.model_type.startswith("earlybert_")
    assert max_positions(model.config) == model.config.max_position_embeddings - 2


def test_mlm_heads_and_families_without_one():
    assert mlm_head("bert") == "cls" and mlm_head("earlybert_roberta") == "lm_head"
    for family in ("bert", "roberta"):
        model = build(family, AutoModelForMaskedLM)
        assert isinstance(getattr(model, mlm_head(family)), torch.nn.Module)
    with pytest.raises(TypeError, match="pre-training supports bert, roberta; got model type 'distilbert'"):
        mlm_head("distilbert")
    assert {name for name, arch in ARCHS.items() if arch.mlm_head} == {"bert", "roberta"}
