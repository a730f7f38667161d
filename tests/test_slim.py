"""save_pretrained -> from_pretrained of pruned models, and that stock models are untouched."""

import logging
import pickle

import pytest
import torch
import transformers
from transformers import AutoConfig, AutoModel, BertModel

import earlybert as eb
from earlybert.archs import layer_shapes

from conftest import FAMILY_HEADS, build, inputs_for, max_diff, outputs, tiny_config
from test_prune import hand_ticket


@pytest.fixture
def transformers_log(caplog):
    """Everything transformers logs at WARNING and above while loading."""
    transformers.logging.enable_propagation()
    caplog.set_level(logging.WARNING, logger="transformers")
    yield caplog
    transformers.logging.disable_propagation()


@pytest.mark.parametrize("family,auto", FAMILY_HEADS)
def test_save_and_reload_gives_identical_slim_model(family, auto, tmp_path, transformers_log):
    model = build(family, auto)
    batch = inputs_for(model)
    eb.prune(model, hand_ticket(model, head_ratio=0.5, ffn_ratio=0.4))
    before = outputs(model, batch)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert not list(tmp_path.glob("*.bin")) and not list(tmp_path.glob("*.py"))
    # The attention implementation is a runtime choice, not saved: ask for the same one to compare bit for bit.
    reloaded, info = auto.from_pretrained(tmp_path, output_loading_info=True, attn_implementation="eager")
    reloaded.eval()
    assert type(reloaded) is type(model) and type(reloaded).__name__.startswith("Slim")
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    assert not [r for r in transformers_log.records if "initialized" in r.getMessage() or "not used" in r.getMessage()]
    assert layer_shapes(reloaded) == layer_shapes(model)
    state, again = model.state_dict(), reloaded.state_dict()
    assert list(state) == list(again) and all(torch.equal(state[k], again[k]) for k in state)
    # Same weights bit for bit; outputs may differ in the last float bit with the memory alignment BLAS sees.
    assert max_diff(outputs(reloaded, batch), before) < 1e-6


def test_stock_models_still_load_as_before(tmp_path):
    model = build("bert", AutoModel)
    model.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path)
    assert type(reloaded) is BertModel and type(reloaded.config) is transformers.BertConfig
    assert layer_shapes(reloaded) == ([4, 4], [37, 37])


def test_from_config_builds_slim_shapes_and_configs_pickle():
    slim_config_class = eb.SLIM_CONFIGS["roberta"]
    base = tiny_config("roberta").to_dict()
    for key in ("model_type", "transformers_version", "architectures"):
        base.pop(key, None)
    config = slim_config_class(**base, layer_num_heads=[1, 3], layer_intermediate_sizes=[5, 37])
    model = AutoModel.from_config(config)
    assert layer_shapes(model) == ([1, 3], [5, 37])
    model(**inputs_for(model))
    again = pickle.loads(pickle.dumps(config))
    assert again.layer_num_heads == [1, 3] and type(again) is slim_config_class


def test_bad_slim_config_is_reported():
    base = tiny_config("bert").to_dict()
    for key in ("model_type", "transformers_version", "architectures"):
        base.pop(key, None)
    config = eb.SLIM_CONFIGS["bert"](**base, layer_num_heads=[2], layer_intermediate_sizes=[5, 5])
    with pytest.raises(ValueError, match="2 entries each"):
        AutoModel.from_config(config)
    config = eb.SLIM_CONFIGS["bert"](**base, layer_num_heads=[2, 9], layer_intermediate_sizes=[5, 5])
    with pytest.raises(ValueError, match="out of range"):
        AutoModel.from_config(config)


def test_slim_config_round_trips_through_autoconfig(tmp_path):
    model = build("distilbert", AutoModel)
    eb.prune(model, hand_ticket(model))
    model.config.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert config.model_type == "earlybert_distilbert"
    assert config.layer_num_heads == model.config.layer_num_heads


def test_attention_implementation_can_be_switched_after_pruning():
    model = build("bert", AutoModel, attn="sdpa")
    batch = inputs_for(model)
    eb.prune(model, hand_ticket(model))
    sdpa = outputs(model, batch)
    model.set_attn_implementation("eager")
    assert model.config._attn_implementation == "eager"
    assert max_diff(outputs(model, batch), sdpa) < 1e-5
    assert torch.is_tensor(sdpa[0])
