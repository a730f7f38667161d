"""tasks.py: loading a task's model and data for fine-tuning, with the checks that fail early."""

import pytest
import torch

from earlybert.finetune import FinetuneConfig

from conftest import write_tiny_encoder


def test_a_bf16_checkpoint_trains_with_float32_weights(tiny_encoder, glue_dir, tmp_path):
    """transformers v5 loads a bf16 checkpoint as bf16 parameters; training from one must still keep float32
    master weights (an update of lr * 1 on a weight of order 1 would round away in bf16), with the values the
    checkpoint holds."""
    from transformers import AutoModel

    from earlybert.tasks import load_model_for, prepare_task

    bf16_dir = tmp_path / "bf16"
    AutoModel.from_pretrained(tiny_encoder).to(torch.bfloat16).save_pretrained(bf16_dir)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (bf16_dir / name).write_bytes((tiny_encoder / name).read_bytes())
    as_saved = AutoModel.from_pretrained(bf16_dir)
    assert next(as_saved.parameters()).dtype == torch.bfloat16  # the library's default, which we override
    config = FinetuneConfig(model=str(bf16_dir), task="sst2", data=str(glue_dir), output="unused")
    model = load_model_for(config.model, prepare_task(config))
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    loaded = dict(model.base_model.named_parameters())
    for name, p in as_saved.named_parameters():
        assert torch.equal(loaded[name], p.float()), name



def test_a_max_length_beyond_the_position_table_is_refused_per_family(glue_dir, tmp_path):
    from earlybert.tasks import prepare_task

    roberta = write_tiny_encoder(tmp_path / "roberta", family="roberta")  # 128 positions, 2 of them reserved
    prepare_task(FinetuneConfig(model=str(roberta), task="sst2", data=str(glue_dir), output="unused", max_length=126))
    with pytest.raises(ValueError, match="max length 127 exceeds the model's 126 position embeddings"):
        prepare_task(FinetuneConfig(model=str(roberta), task="sst2", data=str(glue_dir), output="unused",
                                    max_length=127))
