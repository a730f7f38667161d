"""The fine-tuning pipeline end to end on a tiny encoder and fixture data: methods, artefacts, resume, bad input."""

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification

import earlybert as eb
from earlybert import train as train_module
from earlybert.archs import layer_shapes
from earlybert.finetune import GPU_FFN_MULTIPLE, FinetuneConfig, finetune, warn_if_unaligned
from earlybert.ticket import Ticket

ARTEFACTS_ALL = ["config.json", "results.json", "report.md", "loss.png", "model/model.safetensors",
                 "model/config.json", "model/tokenizer.json"]
ARTEFACTS_TICKET = ["ticket.json", "ticket.png"]
ARTEFACTS_SEARCH = ["mask_history.json", "mask_distance.png", "search.json"]


def config_for(encoder, data, output, **overrides):
    settings = dict(model=str(encoder), task="sst2", data=str(data), output=str(output), batch_size=8, lr=5e-4,
                    epochs=2, earlybert_epochs=1, search_epoch_fraction=0.75, patience=2, checkpoint_every=2, seed=3)
    return FinetuneConfig(**{**settings, **overrides})


@pytest.mark.parametrize("method", ["full", "earlybert", "random", "layerdrop"])
def test_every_method_runs_and_writes_its_artefacts(method, tiny_encoder, glue_dir, tmp_path):
    out = tmp_path / method
    results = finetune(config_for(tiny_encoder, glue_dir, out, method=method))
    expected = ARTEFACTS_ALL + (ARTEFACTS_TICKET if method in ("earlybert", "random") else [])
    expected += ARTEFACTS_SEARCH if method == "earlybert" else []
    assert [name for name in expected if not (out / name).exists()] == []
    assert 0 <= results["score"] <= 100 and results["headline_metric"] == "accuracy"
    assert results["stages"]["train"]["steps"] == (16 if method in ("full", "layerdrop") else 8)
    assert all(t > 0 for t in [s["step_time_s"] for s in results["stages"].values()])
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    model = AutoModelForSequenceClassification.from_pretrained(out / "model")
    if method in ("earlybert", "random"):
        ticket = eb.Ticket.load(out / "ticket.json")
        assert layer_shapes(model) == (ticket.kept_heads, ticket.kept_ffn)
        assert 0 < results["theoretical_fraction_saved_flops"] < 1
    if method == "earlybert":
        search = results["stages"]["search"]
        assert search["steps"] <= 6 and search["stop_reason"] in ("early-bird", "budget")
        assert results["estimated_full_step_time_s"] > 0
    if method == "layerdrop":
        assert model.config.num_hidden_layers == 2  # of 2 layers, "every third" removes none; see test_layerdrop
    assert "| accuracy |" in (out / "report.md").read_text()


class Killed(Exception):
    pass


@pytest.mark.parametrize("stage,after", [("search", 1), ("train", 2)])
def test_resume_after_a_kill_gives_the_same_result(stage, after, tiny_encoder, glue_dir, tmp_path, monkeypatch):
    reference = finetune(config_for(tiny_encoder, glue_dir, tmp_path / "whole", checkpoint_every=1))
    config = config_for(tiny_encoder, glue_dir, tmp_path / "killed", checkpoint_every=1)

    real_save = train_module.save_checkpoint
    saves = {"n": 0}

    def save_then_die(accelerator, directory, progress):
        real_save(accelerator, directory, progress)
        if directory.name.startswith(stage):
            saves["n"] += 1
            if saves["n"] == after:
                raise Killed

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        finetune(config)
    assert not (tmp_path / "killed" / "results.json").exists()
    monkeypatch.setattr(train_module, "save_checkpoint", real_save)
    with pytest.raises(ValueError, match="not empty; pass --resume"):
        finetune(config)
    resumed = finetune(config, resume=True)
    assert resumed["metrics"] == reference["metrics"]
    assert resumed["stages"]["train"]["steps"] == reference["stages"]["train"]["steps"]
    for name in ("search", "train"):
        assert resumed["stages"][name]["steps"] == reference["stages"][name]["steps"]
    assert eb.Ticket.load(tmp_path / "killed" / "ticket.json") == eb.Ticket.load(tmp_path / "whole" / "ticket.json")
    whole = json.loads((tmp_path / "whole" / "search.json").read_text())["losses"]
    assert json.loads((tmp_path / "killed" / "search.json").read_text())["losses"] == whole
    assert not list((tmp_path / "killed").glob("*checkpoint*"))  # cleaned up once finished


def test_resume_refuses_a_different_configuration(tiny_encoder, glue_dir, tmp_path):
    finetune(config_for(tiny_encoder, glue_dir, tmp_path / "run", method="full", epochs=1))
    with pytest.raises(ValueError, match="was started with other settings: epochs 1 in the run, 2 now; resume with"):
        finetune(config_for(tiny_encoder, glue_dir, tmp_path / "run", method="full", epochs=2), resume=True)


def test_gradient_accumulation_counts_optimizer_steps_and_resumes(tiny_encoder, glue_dir, tmp_path, monkeypatch):
    reference = finetune(config_for(tiny_encoder, glue_dir, tmp_path / "whole", method="full", batch_size=4,
                                    grad_accum=2, checkpoint_every=3))
    assert reference["stages"]["train"]["steps"] == 16  # 64 examples / (4 x 2) per step, 2 epochs
    real_save = train_module.save_checkpoint

    def save_then_die(accelerator, directory, progress):
        real_save(accelerator, directory, progress)
        raise Killed

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_die)
    config = config_for(tiny_encoder, glue_dir, tmp_path / "killed", method="full", batch_size=4, grad_accum=2,
                        checkpoint_every=3)
    with pytest.raises(Killed):
        finetune(config)
    monkeypatch.setattr(train_module, "save_checkpoint", real_save)
    resumed = finetune(config, resume=True)
    assert resumed["metrics"] == reference["metrics"]
    whole = json.loads((tmp_path / "whole" / "results.json").read_text())
    assert resumed["stages"]["train"]["steps"] == whole["stages"]["train"]["steps"]


def test_a_gpu_run_is_warned_about_ffn_widths_off_the_tensor_core_sizes(caplog):
    def ticket(widths):
        return Ticket(heads=[[0, 1]] * len(widths), ffn=[list(range(w)) for w in widths], num_heads=[3] * len(widths),
                      ffn_sizes=[3 * GPU_FFN_MULTIPLE] * len(widths))

    odd, aligned = ticket([GPU_FFN_MULTIPLE, 2 * GPU_FFN_MULTIPLE - 5]), ticket([GPU_FFN_MULTIPLE, 2 * GPU_FFN_MULTIPLE])
    with caplog.at_level("WARNING", logger="earlybert.finetune"):
        assert warn_if_unaligned(odd, torch.device("cuda"))
        assert "1 of 2 layers" in caplog.text and "--ffn-multiple 64" in caplog.text
        caplog.clear()
        assert not warn_if_unaligned(aligned, torch.device("cuda"))
        assert not warn_if_unaligned(odd, torch.device("cpu"))  # CPUs run odd widths at their FLOP cost
        assert caplog.text == ""
