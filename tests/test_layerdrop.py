import torch
from transformers import AutoModel, AutoModelForSequenceClassification

from earlybert.archs import blocks
from earlybert.layerdrop import LayerDropBlock, add_layerdrop, drop_every_third_layer, remove_layerdrop

from conftest import inputs_for, tiny_config


def six_layer_model(family="bert"):
    config = tiny_config(family)
    setattr(config, "n_layers" if family == "distilbert" else "num_hidden_layers", 6)
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(config)


def test_layerdrop_skips_whole_blocks_only_in_training():
    model = six_layer_model()
    batch = inputs_for(model)
    model.eval()
    with torch.no_grad():
        before = model(**batch).logits
    add_layerdrop(model, 0.5)
    assert all(isinstance(b, LayerDropBlock) for b in blocks(model))
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, before)  # eval: nothing dropped
    model.train()
    calls = []
    for block in blocks(model):
        block.block.register_forward_hook(lambda *a: calls.append(1))
    torch.manual_seed(0)
    for _ in range(20):
        model(**batch)
    assert 20 * 6 * 0.3 < len(calls) < 20 * 6 * 0.7  # about half of the block calls skipped
    remove_layerdrop(model)
    assert not any(isinstance(b, LayerDropBlock) for b in blocks(model))


def test_dropping_every_third_layer_saves_and_reloads(tmp_path):
    for family in ("bert", "distilbert"):
        model = six_layer_model(family).eval()
        kept_blocks = [blocks(model)[i] for i in (0, 1, 3, 4)]
        assert drop_every_third_layer(model) == [0, 1, 3, 4]
        assert blocks(model) == kept_blocks
        batch = inputs_for(model)
        with torch.no_grad():
            out = model(**batch).logits
        model.save_pretrained(tmp_path / family)
        reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / family).eval()
        assert len(blocks(reloaded)) == 4
        with torch.no_grad():
            assert (reloaded(**batch).logits - out).abs().max() < 1e-6
    assert isinstance(AutoModel.from_pretrained(tmp_path / "bert"), torch.nn.Module)
