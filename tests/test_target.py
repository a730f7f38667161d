"""`finetune --target-saving` on a tiny encoder (4 heads per layer, 37 FFN neurons) and fixture data: the pick is
the least-pruned candidate reaching the target, its ticket a cut of the search's coefficients, and an unreachable
target fails in one line naming the flag."""

import json
from pathlib import Path

import pytest

import earlybert as eb
from earlybert import target as target_module
from earlybert.cli import main
from earlybert.finetune import COEFFICIENTS, FinetuneConfig, load_coefficients
from earlybert.target import TargetError, finetune_to_target

SETTINGS = dict(task="sst2", batch_size=8, lr=5e-4, epochs=2, earlybert_epochs=1, search_epoch_fraction=0.75,
                patience=2, checkpoint_every=2, seed=3)
# The candidates' FFN ratios are 0.05 apart and a slim step is half the full run's steps here, so neighbouring
# candidates' FLOP-predicted savings differ by well under this: the least-pruned pick lands within it of the target.
TOLERANCE = 0.05
TARGET = 0.25  # no pruning saves about 1 - (0.75 + 1) / 2 = 12.5% here; the most pruning much more


def config(encoder, data, output) -> FinetuneConfig:
    return FinetuneConfig(model=str(encoder), data=str(data), output=str(output), **SETTINGS)


def time_as_flops(base, task_info, coefficients, point):
    """A calibration under which time follows FLOPs exactly (full step = the search's mean step, no overhead), so
    the time-based pick is the FLOP-based one and the test does not depend on this machine's timings."""
    stage = json.loads((Path(base.output) / "search" / "results.json").read_text())["stage"]
    step = stage["step_time_s"] / stage["steps"]
    return {"full_mean_step_s": step, "slim_mean_step_s": step, "ratio": 1.0, "pairs": 0, "batches": 0}


def test_the_pick_is_the_least_pruned_candidate_reaching_the_target(tiny_encoder, glue_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(target_module, "_calibrate", time_as_flops)
    monkeypatch.setattr(target_module, "overhead_share", lambda flop_ratio, time_ratio: 0.0)
    out = tmp_path / "target"
    results = finetune_to_target(config(tiny_encoder, glue_dir, out), TARGET)
    chosen = json.loads((out / "target.json").read_text())
    rows = chosen["candidates"]
    assert len(rows) == 3 * 13  # 0, 1, 2 of 4 heads by FFN 0 .. 0.6
    for row in rows:
        assert row["predicted_saving"] == pytest.approx(row["predicted_saving_flops"])
    assert TARGET <= results["predicted_saving_flops"] <= TARGET + TOLERANCE
    assert not [r for r in rows if r["flop_ratio"] > results["flop_ratio"] and r["predicted_saving"] >= TARGET]
    heads, ffn, step = load_coefficients(out / "search" / COEFFICIENTS)
    picked = target_module.GridPoint(results["picked"]["heads"], results["picked"]["ffn_ratio"])
    expected = eb.draw_ticket(heads, ffn, picked.ticket_config(eb.TicketConfig()), step=step)
    ticket = eb.Ticket.load(out / "run" / "ticket.json")
    assert (ticket.heads, ticket.ffn) == (expected.heads, expected.ffn)
    run = json.loads((out / "run" / "results.json").read_text())
    assert results["measured_saving"] == run["fraction_saved_vs_estimated_full"]
    assert results["theoretical_saving_flops"] == pytest.approx(results["predicted_saving_flops"])
    report = (out / "report.md").read_text()
    assert "Picked:" in report and "**picked**" in report and "| predicted (time) |" in report
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    assert finetune_to_target(config(tiny_encoder, glue_dir, out), TARGET, resume=True) == \
        json.loads(json.dumps(results))


def test_expected_saving_and_overhead_share():
    assert target_module.expected_saving(10, 1.0, 100, 50, 0.5) == pytest.approx(1 - (10 + 25) / 100)
    assert target_module.overhead_share(0.5, 0.75) == pytest.approx(0.5)
    assert target_module.overhead_share(0.5, 0.4) == 0.0 and target_module.overhead_share(1.0, 1.0) == 0.0


def cli_args(encoder, data, output) -> list[str]:
    return ["finetune", "--model", str(encoder), "--task", "sst2", "--data", str(data), "--output", str(output),
            "--batch-size", "8", "--lr", "5e-4", "--epochs", "2", "--earlybert-epochs", "1",
            "--search-epoch-fraction", "0.75", "--patience", "2"]


@pytest.mark.parametrize("value,message", [
    ("0.99", "--target-saving 0.99: unreachable; even with a free search the grid's most pruning (heads 2, FFN 0.6)"),
    ("1.5", "--target-saving 1.5: give the fraction of fine-tuning time to save, in (0, 1)"),
])
def test_a_target_out_of_reach_exits_2_with_one_line_naming_the_flag(value, message, tiny_encoder, glue_dir,
                                                                     tmp_path, capsys):
    out = tmp_path / "out"
    assert main([*cli_args(tiny_encoder, glue_dir, out), "--target-saving", value]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the log lines
    assert err.startswith("earlybert: error: ") and message in err
    assert not out.exists()  # refused before the search


def test_a_target_out_of_reach_in_time_fails_after_the_search(tiny_encoder, glue_dir, tmp_path, monkeypatch):
    # Pruning saves no time per step, so only the third fewer steps saves any: at most 1/3, less the search. The
    # calibration is made to follow FLOPs, so that the verdict does not hang on this machine's load.
    monkeypatch.setattr(target_module, "_calibrate", time_as_flops)
    monkeypatch.setattr(target_module, "overhead_share", lambda flop_ratio, time_ratio: 0.999)
    with pytest.raises(TargetError, match=r"--target-saving 0.4: unreachable on this machine; the most pruning in "
                                          r"the grid \(heads 2, FFN 0.6\) is predicted to save"):
        finetune_to_target(config(tiny_encoder, glue_dir, tmp_path / "out"), 0.4)


def test_the_command_reports_the_pick(tiny_encoder, glue_dir, tmp_path, capsys, monkeypatch):
    # On a model this small a step is mostly overhead and a gated search step costs several plain ones: in time,
    # no candidate saves anything, so time is made to follow FLOPs here too.
    monkeypatch.setattr(target_module, "_calibrate", time_as_flops)
    monkeypatch.setattr(target_module, "overhead_share", lambda flop_ratio, time_ratio: 0.0)
    out = tmp_path / "cli"
    assert main([*cli_args(tiny_encoder, glue_dir, out), "--target-saving", "0.15"]) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["target"] == 0.15 and results["predicted_saving"] >= 0.15
    assert isinstance(results["measured_saving"], float) and f"report: {out / 'report.md'}" in printed
    assert "measured" in (out / "report.md").read_text()
