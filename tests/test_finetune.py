"""The fine-tuning pipeline end to end on a tiny encoder and fixture data: methods, artefacts, resume, bad input."""

import json
import math
from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForSequenceClassification

import earlybert as eb
from earlybert import finetune as finetune_module
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


@pytest.mark.parametrize("method", ["earlybert", "random"])
def test_a_run_in_slices_ends_where_an_uninterrupted_one_does(method, tiny_encoder, glue_dir, tmp_path, monkeypatch):
    """stop_after pauses after that many steps (search and training together); resuming continues exactly."""
    whole = finetune(config_for(tiny_encoder, glue_dir, tmp_path / "whole", method=method))
    measured = []
    real_ratio = finetune_module.step_time_ratio
    monkeypatch.setattr(finetune_module, "step_time_ratio", lambda *a, **k: measured.append(1) or real_ratio(*a, **k))
    config = config_for(tiny_encoder, glue_dir, tmp_path / "sliced", method=method)
    calls, results = 0, None
    while results is None:
        results = finetune(config, resume=calls > 0, stop_after=3)
        calls += 1
    steps = sum(stage["steps"] for stage in whole["stages"].values())
    assert calls == math.ceil(steps / 3)  # a pause every 3 steps, the last call finishing (and evaluating) the run
    assert len(measured) == 1  # the slim / full calibration: once, before training, not on every resume
    assert results["metrics"] == whole["metrics"] and results["losses"] == whole["losses"]
    assert {k: v["steps"] for k, v in results["stages"].items()} == {k: v["steps"] for k, v in whole["stages"].items()}
    assert eb.Ticket.load(tmp_path / "sliced" / "ticket.json") == eb.Ticket.load(tmp_path / "whole" / "ticket.json")
    assert results["paired_step_time_ratio"] == json.loads((tmp_path / "sliced" / "step_time_ratio.json").read_text())
    assert len(json.loads((tmp_path / "sliced" / "attempts.json").read_text())["attempts_s"]) == calls
    assert not list((tmp_path / "sliced").glob("*checkpoint*"))


def test_resume_refuses_a_different_configuration(tiny_encoder, glue_dir, tmp_path):
    finetune(config_for(tiny_encoder, glue_dir, tmp_path / "run", method="full", epochs=1))
    with pytest.raises(ValueError, match="was started with other settings: epochs 1 in the run, 2 now; resume with"):
        finetune(config_for(tiny_encoder, glue_dir, tmp_path / "run", method="full", epochs=2), resume=True)


def test_resume_refuses_data_that_changed_since_the_run_started(tiny_encoder, tmp_path):
    """Same settings, same paths, another file behind them: the rest of the run would train on other examples."""
    from conftest import write_sst2_like

    data = write_sst2_like(tmp_path / "glue")
    config = config_for(tiny_encoder, data, tmp_path / "run", method="full")
    assert finetune(config, stop_after=2) is None
    assert json.loads((tmp_path / "run" / "data.json").read_text())["source"] == f"--task sst2 --data {data}"
    copied = tmp_path / "copy" / "SST-2"  # the same bytes copied anew (new times) are the same data
    copied.mkdir(parents=True)
    for name in ("train.tsv", "dev.tsv"):
        (copied / name).write_bytes((data / "SST-2" / name).read_bytes())
        (data / "SST-2" / name).unlink()
        (copied / name).rename(data / "SST-2" / name)
    assert finetune(config, resume=True, stop_after=2) is None
    write_sst2_like(tmp_path / "glue", seed=1)  # other sentences, same paths and settings
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match=r"run folder .*run was started on other data: the examples --task sst2 "
                                         r"--data .* gives now differ"):
        finetune(config, resume=True)
    assert {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()} == before  # nothing written
    recorded = json.loads((tmp_path / "run" / "data.json").read_text())["fingerprint"]
    assert finetune(config, resume=True, overwrite=True, stop_after=2) is None  # replacing it: nothing to compare
    assert json.loads((tmp_path / "run" / "data.json").read_text())["fingerprint"] != recorded
    (tmp_path / "run" / "data.json").unlink()  # a run from before runs kept their data's fingerprint: goes on
    assert finetune(config, resume=True)["method"] == "full"


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


def test_compare_interleaves_the_methods_in_slices_with_the_results_of_whole_runs(tiny_encoder, glue_dir, tmp_path,
                                                                                   monkeypatch):
    from earlybert import compare as compare_module

    base = config_for(tiny_encoder, glue_dir, tmp_path / "whole")
    methods = ["random", "full", "earlybert"]
    whole = compare_module.compare(base, methods, [1], slice_steps=0)
    calls = []
    real = compare_module.finetune

    def logged(config, **kwargs):
        result = real(config, **kwargs)
        calls.append((config.method, kwargs["stop_after"], result is not None))
        return result

    monkeypatch.setattr(compare_module, "finetune", logged)
    sliced = compare_module.compare(replace(base, output=str(tmp_path / "sliced")), methods, [1], slice_steps=4)
    assert [r["method"] for r in sliced] == [r["method"] for r in whole] == ["full", "earlybert", "random"]
    for a, b in zip(whole, sliced):
        assert (a["metrics"], a["losses"], a["ticket"]) == (b["metrics"], b["losses"], b["ticket"])
    # turns in proportion to the epochs each trains: full 2 (16 steps) gets 4 steps a turn, EarlyBERT 1 + a 0.75-epoch
    # search (8 + 6 steps) 4, random 1 (8 steps) 2, once EarlyBERT's search has drawn the ticket whose shape it copies
    assert calls == [
        ("full", 4, False), ("earlybert", 4, False),  # the search is not done: the random ticket waits
        ("full", 4, False), ("earlybert", 4, False), ("random", 2, False),
        ("full", 4, False), ("earlybert", 4, False), ("random", 2, False),
        ("full", 4, True), ("earlybert", 4, True), ("random", 2, False),
        ("random", 2, True)]
    assert json.loads((tmp_path / "sliced" / "comparison.json").read_text())["slice_steps"] == 4
    assert "taking turns of up to 4 steps each" in (tmp_path / "sliced" / "report.md").read_text()
    assert "one after another" in (tmp_path / "whole" / "report.md").read_text()
    assert (tmp_path / "sliced" / "random-seed1" / "config.json").read_text().count("earlybert-seed1/ticket.json") == 1


def test_a_random_ticket_alone_copies_the_shape_of_an_earlier_earlybert_run_and_never_waits_forever(
        tiny_encoder, glue_dir, tmp_path):
    from earlybert import compare as compare_module

    base = config_for(tiny_encoder, glue_dir, tmp_path / "cmp")
    compare_module.compare(base, ["earlybert"], [1])
    [random] = compare_module.compare(base, ["random"], [1], resume=True)
    assert random["ticket"] == json.loads((tmp_path / "cmp" / "earlybert-seed1" / "results.json").read_text())["ticket"]
    assert "earlybert-seed1/ticket.json" in (tmp_path / "cmp" / "random-seed1" / "config.json").read_text()
    # an EarlyBERT run that finished without its ticket: the random run says so instead of waiting for it
    (tmp_path / "cmp" / "earlybert-seed2").mkdir()
    (tmp_path / "cmp" / "earlybert-seed2" / "results.json").write_text("{}")
    with pytest.raises(ValueError, match="random seed 2: .*earlybert-seed2/ticket.json is missing although the "
                                         "EarlyBERT run has finished"):
        compare_module.compare(base, ["earlybert", "random"], [2], resume=True)
    with pytest.raises(ValueError, match=r"slice_steps \(--slice\) must be >= 0, got -1"):
        compare_module.compare(base, ["full"], [1], resume=True, slice_steps=-1)
