"""The training loop's pieces: optimizer groups with the gates' own learning rate, the warm-up-fair clock, the
paired step-time ratio behind a single run's estimate of the full model's time."""

import json
import os
import subprocess
import sys

import pytest
import torch
from accelerate import Accelerator

import earlybert as eb
from earlybert.data import padding_collator
from earlybert.finetune import FinetuneConfig, finetune
from earlybert.gates import GATE_LR, GateConfig, decay_groups
from earlybert.train import WARMUP_STEPS, StageResult, TrainConfig, make_optimizer, step_time_ratio

from conftest import build, inputs_for


def gated_classifier(seed: int = 0):
    model = build("bert", eb.slim.AUTO_CLASSES[4], seed=seed).train()
    eb.add_gates(model)
    return model


def test_gates_get_their_own_group_learning_rate_and_no_weight_decay():
    model = gated_classifier()
    groups = decay_groups(model, weight_decay=0.01, gate_lr=3e-2)
    gate_ids = {id(p) for p in eb.get_gates(model).parameters()}
    assert [len(g["params"]) > 0 for g in groups] == [True, True, True]
    assert {id(p) for p in groups[2]["params"]} == gate_ids and groups[2]["lr"] == 3e-2
    assert groups[2]["weight_decay"] == 0.0 and groups[0]["weight_decay"] == 0.01
    assert not gate_ids & {id(p) for g in groups[:2] for p in g["params"]}
    optimizer = make_optimizer(model, TrainConfig(lr=2e-5, gate_lr=3e-2), torch.device("cpu"))
    assert [g["lr"] for g in optimizer.param_groups] == [2e-5, 2e-5, 3e-2]
    eb.remove_gates(model)
    assert len(decay_groups(model, 0.01, gate_lr=3e-2)) == 2  # an ungated model: no empty third group


def test_gate_learning_rate_default_and_the_papers_setting():
    assert GateConfig().lr == GATE_LR and GateConfig().learning_rate(2e-5) == GATE_LR
    assert GateConfig(lr="model").learning_rate(2e-5) == 2e-5
    assert GateConfig(lr="0.05").lr == 0.05
    for bad in ("fast", 0, -1e-3):
        with pytest.raises(ValueError, match="gate learning rate"):
            GateConfig(lr=bad)


def test_the_papers_gate_learning_rate_reproduces_the_shared_group_bit_for_bit():
    """Gates in a group of their own at the model's rate train exactly as inside the no-decay group did."""
    batch = {**inputs_for(build("bert", eb.slim.AUTO_CLASSES[4])), "labels": torch.tensor([0, 1])}
    results = []
    for separate in (False, True):
        model = gated_classifier(seed=5)
        torch.manual_seed(0)
        if separate:
            groups = decay_groups(model, 0.01, gate_lr=None)
        else:
            decay, no_decay, gates = decay_groups(model, 0.01)
            groups = [decay, {**no_decay, "params": no_decay["params"] + gates["params"]}]
        optimizer = torch.optim.AdamW(groups, lr=1e-3, fused=True)
        for _ in range(3):
            (model(**batch).loss + eb.sparsity_penalty(model)).backward()
            optimizer.step()
            optimizer.zero_grad()
        results.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_finetune_search_trains_the_gates_at_the_gate_learning_rate(tiny_encoder, glue_dir, tmp_path):
    moved = {}
    for lr in ("model", 0.05):
        config = FinetuneConfig(model=str(tiny_encoder), task="sst2", data=str(glue_dir), output=str(tmp_path / str(lr)),
                                batch_size=8, lr=1e-4, epochs=1, earlybert_epochs=0.25, search_max_steps=4,
                                gates=GateConfig(lr=lr), checkpoint_every=0, seed=3)
        finetune(config)
        ticket = eb.Ticket.load(tmp_path / str(lr) / "ticket.json")
        moved[lr] = max(abs(c - 1) for layer in ticket.ffn_scores + ticket.head_scores for c in layer)
        saved = json.loads((tmp_path / str(lr) / "config.json").read_text())
        assert saved["gates"]["lr"] == lr
    # Adam moves a parameter by at most about its learning rate per step (the first step by exactly that): 4 steps
    assert 1e-4 * 0.9 < moved["model"] < 4 * 1e-4 * 1.1 and 0.05 * 0.9 < moved[0.05] < 4 * 0.05 * 1.1


def test_every_stage_counts_its_first_steps_at_the_mean_of_the_others():
    times = [5.0, 3.0, 2.0] + [1.0, 2.0, 3.0] * 4
    stage = StageResult("s", steps=len(times), step_times=times)
    assert WARMUP_STEPS == 3
    assert stage.raw_step_time_s == sum(times)
    assert stage.step_time_s == pytest.approx(24.0 + 3 * 2.0)
    summary = stage.summary()
    assert summary["step_time_s"] == stage.step_time_s and summary["raw_step_time_s"] == sum(times)
    assert summary["warmup_steps_at_mean"] == 3
    short = StageResult("s", steps=2, step_times=[4.0, 1.0])  # nothing to take a mean from: counted as measured
    assert short.step_time_s == 5.0 and short.summary()["warmup_steps_at_mean"] == 0


def test_step_time_ratio_times_copies_on_the_same_batches(tiny_encoder, glue_dir):
    from earlybert.tasks import load_model_for, prepare_task

    config = FinetuneConfig(model=str(tiny_encoder), task="sst2", data=str(glue_dir), output="unused")
    task_info = prepare_task(config)
    full = load_model_for(config.model, task_info)
    slim = load_model_for(config.model, task_info)
    eb.prune(slim, eb.random_scores_ticket(*eb.layer_shapes(slim), eb.TicketConfig(), 0))
    before = [p.detach().clone() for p in slim.parameters()] + [p.detach().clone() for p in full.parameters()]
    out = step_time_ratio(slim, full, task_info.train_features, padding_collator(task_info.tokenizer),
                          TrainConfig(batch_size=8), Accelerator(cpu=True), pairs=4, batches=3)
    assert out["pairs"] == 4 and out["batches"] == 3 and out["full_mean_step_s"] > 0 and out["slim_mean_step_s"] > 0
    assert out["ratio"] == pytest.approx(out["slim_mean_step_s"] / out["full_mean_step_s"])
    after = [p.detach() for p in slim.parameters()] + [p.detach() for p in full.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(before, after))  # the models themselves are not trained


def test_a_single_runs_estimate_of_full_time_comes_from_the_paired_ratio(tiny_encoder, glue_dir, tmp_path):
    config = FinetuneConfig(model=str(tiny_encoder), task="sst2", data=str(glue_dir), output=str(tmp_path / "run"),
                            batch_size=8, epochs=1, earlybert_epochs=1, search_max_steps=3, checkpoint_every=0)
    results = finetune(config)
    paired = results["paired_step_time_ratio"]
    train = results["stages"]["train"]
    expected = train["mean_step_s"] / paired["ratio"] * results["full_run_steps"]
    assert results["estimated_full_step_time_s"] == pytest.approx(expected)
    assert results["fraction_saved_vs_estimated_full"] == pytest.approx(
        1 - results["total_step_time_s"] / expected)


def test_a_step_slowed_by_something_else_drops_out_of_the_calibration():
    from earlybert.train import batch_mean_of_medians

    steady = [[1.0, 1.1, 1.0], [2.0, 2.1, 2.0]]
    assert batch_mean_of_medians(steady) == pytest.approx(1.5)
    burst = [[1.0, 9.0, 1.0], [2.0, 2.1, 2.0]]  # one step of six five times as long: the same answer
    assert batch_mean_of_medians(burst) == pytest.approx(batch_mean_of_medians(steady))
    assert batch_mean_of_medians([[3.0], []]) == 3.0  # a batch no pair reached does not count


def test_the_step_time_calibration_times_batches_spread_like_trainings():
    """The paired ratio depends on the padded length: its batches must stand for the whole spread of training's,
    not be whichever came first."""
    import random
    import statistics

    from earlybert.train import representative_batches

    rng = random.Random(0)
    lengths = [rng.choice([rng.randint(4, 12)] * 4 + [rng.randint(60, 120)]) for _ in range(203)]  # mostly short
    dataset = [{"input_ids": list(range(n))} for n in lengths]

    def collate(rows):
        width = max(len(r["input_ids"]) for r in rows)
        return {"input_ids": torch.tensor([r["input_ids"] + [0] * (width - len(r["input_ids"])) for r in rows])}

    picked = representative_batches(dataset, collate, batch_size=2, count=5, seed=3)
    widths = [b["input_ids"].shape[1] for b in picked]
    assert widths == sorted(widths) and all(b["input_ids"].shape[0] == 2 for b in picked)
    assert widths[0] <= 12 and widths[-1] >= 60  # both ends of the spread: the short batches and the long ones
    whole = [collate(dataset[i : i + 2])["input_ids"].shape[1] for i in range(0, 202, 2)]
    assert statistics.fmean(widths) == pytest.approx(statistics.fmean(whole), rel=0.15)
    again = representative_batches(dataset, collate, batch_size=2, count=5, seed=3)  # the seed fixes them
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(picked, again))
    # fewer examples than a batch: the one batch there is, every time
    small = representative_batches(dataset[:3], collate, batch_size=8, count=2, seed=0)
    assert [b["input_ids"].shape[0] for b in small] == [3, 3]


@pytest.mark.parametrize("preset", [None, ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "77"),
                                    ("DNNL_PRIMITIVE_CACHE_CAPACITY", "77")])
def test_importing_earlybert_widens_the_onednn_kernel_cache_unless_the_user_set_it(preset):
    # Real batches padded to their longest bring new matrix shapes at nearly every step; with oneDNN's default of
    # 1,024 cached kernels a run rebuilt kernels as it went (bench/shape_cache.py). The capacity is read once per
    # process, so it must be in the environment as soon as earlybert is imported, and a user's own setting (under
    # either of oneDNN's names) must survive.
    names = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "DNNL_PRIMITIVE_CACHE_CAPACITY")
    env = {k: v for k, v in os.environ.items() if k not in names}
    if preset is not None:
        env[preset[0]] = preset[1]
    code = "import os, torch, earlybert; print([os.environ.get(n) for n in %r])" % (names,)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    if preset is None:
        expected = [str(eb.ONEDNN_CACHE_CAPACITY), None]
    else:
        expected = [preset[1] if name == preset[0] else None for name in names]
    assert out.strip() == str(expected)
