"""bench/tradeoff.py's check of the paper's direction on the sweep's grid (more pruning: more time saved, lower
score), which its report states."""

from pathlib import Path

import pytest

from conftest import bench_script


@pytest.fixture(scope="module")
def tradeoff():
    with bench_script("tradeoff") as module:
        yield module


def point(heads, ratio, time_saved, score):
    return {"heads": heads, "ffn_ratio": ratio, "theoretical_saved": 0.1 * heads + ratio, "time_saved": time_saved,
            "score": score}


def test_a_grid_in_the_papers_direction_has_no_exceptions(tradeoff):
    points = [point(h, r, 0.1 * h + r, 90 - h - 10 * r) for h in (3, 4, 5) for r in (0.3, 0.5)]
    d = tradeoff.direction(points)
    assert d["spearman_time_saved_vs_flops"] == pytest.approx(1.0)
    assert d["spearman_score_vs_flops"] == pytest.approx(-1.0)
    assert d["neighbours"] == 2 * 2 + 3 and d["time_saved_falls"] == [] and d["score_rises"] == []


def test_the_exceptions_are_named(tradeoff):
    points = [point(3, 0.3, 0.38, 84.0), point(3, 0.4, 0.36, 84.2), point(4, 0.3, 0.39, 85.0),
              point(4, 0.4, 0.41, 85.1)]
    d = tradeoff.direction(points)
    assert d["time_saved_falls"] == ["3h/30% -> 3h/40%: 38.0% -> 36.0%"]
    assert d["score_rises"] == ["3h/30% -> 4h/30%: 84.00 -> 85.00", "3h/40% -> 4h/40%: 84.20 -> 85.10",
                                "3h/30% -> 3h/40%: 84.00 -> 84.20", "4h/30% -> 4h/40%: 85.00 -> 85.10"]
    assert tradeoff.direction(points[:2]) is None  # two points rank nothing


def test_the_target_part_reports_the_pick_and_measures_against_the_sweeps_full_run(tradeoff, tiny_encoder, glue_dir,
                                                                                   tmp_path, monkeypatch):
    import argparse
    import json

    from earlybert import target as target_module

    def time_as_flops(base, task_info, coefficients, point):  # as in test_target: the pick must not hang on timings
        stage = json.loads((Path(base.output) / "search" / "results.json").read_text())["stage"]
        step = stage["step_time_s"] / stage["steps"]
        return {"full_mean_step_s": step, "slim_mean_step_s": step, "ratio": 1.0, "pairs": 0, "batches": 0}

    monkeypatch.setattr(target_module, "_calibrate", time_as_flops)
    monkeypatch.setattr(target_module, "overhead_share", lambda flop_ratio, time_ratio: 0.0)
    # fp32 as every other test here: a bf16 run would need the process's accelerator state set up for bf16
    monkeypatch.setattr(tradeoff, "mixed_precision", lambda: "no")
    args = argparse.Namespace(model=str(tiny_encoder), data=str(glue_dir), seed=3, train_samples=None,
                              target_saving=0.15)
    t = tradeoff.run_target(args, tmp_path)
    assert t["target"] == 0.15 and t["predicted_saving"] >= 0.15 and t["measured_saving"] is None
    run = json.loads((tmp_path / "target" / "run" / "results.json").read_text())
    full = tmp_path / "sweep" / "full-seed3"
    full.mkdir(parents=True)
    (full / "results.json").write_text(json.dumps({"total_step_time_s": 2 * run["total_step_time_s"], "score": 50.0}))
    again = tradeoff.run_target(args, tmp_path)  # finished: read back, now measured against the full run
    assert again["measured_saving"] == pytest.approx(0.5) and again["picked"] == t["picked"]
    assert again["search_speed_vs_sweep"] is None  # no sweep search to measure the drift by
    stage = json.loads((tmp_path / "target" / "search" / "results.json").read_text())["stage"]
    (tmp_path / "sweep" / "search-seed3").mkdir()
    slower = {"steps": stage["steps"], "step_time_s": 2 * stage["step_time_s"]}  # the sweep's sitting: 2x slower
    (tmp_path / "sweep" / "search-seed3" / "results.json").write_text(json.dumps({"stage": slower}))
    drift = tradeoff.run_target(args, tmp_path)
    assert drift["search_speed_vs_sweep"] == pytest.approx(0.5)
    assert drift["measured_saving_drift_corrected"] == pytest.approx(0.0)  # full scaled to this sitting: no saving
