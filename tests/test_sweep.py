"""The trade-off sweep on a tiny encoder (4 heads per layer, 37 FFN neurons) and fixture data: every ticket is a cut
of the one search's saved coefficients, a point at the search's own ratios is an earlybert run, a killed sweep
resumes to the same table, and the command line runs it and refuses bad grids in one line."""

import json
import re

import pytest

import earlybert as eb
from earlybert import sweep as sweep_module
from earlybert import train as train_module
from earlybert.cli import main
from earlybert.finetune import COEFFICIENTS, FinetuneConfig, finetune, load_coefficients
from earlybert.report import sweep_table
from earlybert.sweep import GridError, make_grid, pareto_front, sweep

# Heads pruned per layer (a count and a fraction) by FFN ratio; (1, 0.4) is the search's own ticket (1/3 of 4 heads).
HEADS, FFN = [1, 0.5], [0.4, 0.7]
SETTINGS = dict(task="sst2", batch_size=8, lr=5e-4, epochs=2, earlybert_epochs=1, search_epoch_fraction=0.75,
                patience=2, checkpoint_every=2, seed=3)


def base_config(encoder, data, output, **overrides) -> FinetuneConfig:
    return FinetuneConfig(**{"model": str(encoder), "data": str(data), "output": str(output), **SETTINGS, **overrides})


@pytest.fixture(scope="module")
def swept(tiny_encoder, glue_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "sweep"
    return out, sweep(base_config(tiny_encoder, glue_dir, out), HEADS, FFN)


def read(path):
    return json.loads(path.read_text())


def test_every_ticket_is_draw_ticket_of_the_saved_coefficients(swept):
    out, _ = swept
    heads, ffn, step = load_coefficients(out / "search-seed3" / COEFFICIENTS)
    searched = eb.Ticket.load(out / "search-seed3" / "ticket.json")  # drawn from the gates where the search stopped
    assert ([h.tolist() for h in heads], [f.tolist() for f in ffn], step) == \
        (searched.head_scores, searched.ffn_scores, searched.step)
    search_stage = read(out / "search-seed3" / "search.json")["stage"]
    shapes = set()
    for point in make_grid(HEADS, FFN):
        ticket = eb.Ticket.load(out / f"{point.name}-seed3" / "ticket.json")
        expected = eb.draw_ticket(heads, ffn, point.ticket_config(eb.TicketConfig()))
        assert (ticket.heads, ticket.ffn, ticket.step) == (expected.heads, expected.ffn, step)
        shapes.add((sum(ticket.kept_heads), sum(ticket.kept_ffn)))
        assert read(out / f"{point.name}-seed3" / "results.json")["stages"]["search"] == search_stage  # charged
    assert shapes == {(6, 44), (4, 44), (6, 22), (4, 22)}  # four different cuts of the same coefficients
    assert read(out / "heads1-ffn0.4-seed3" / "config.json")["search_from"] == "../search-seed3"
    assert "search_from" not in read(out / "full-seed3" / "config.json")  # as before: older runs still resume


def test_a_point_at_the_searchs_own_ratios_is_an_earlybert_run(swept, tiny_encoder, glue_dir, tmp_path):
    out, _ = swept
    alone = finetune(base_config(tiny_encoder, glue_dir, tmp_path / "earlybert"))
    point = read(out / "heads1-ffn0.4-seed3" / "results.json")
    assert point["metrics"] == alone["metrics"] and point["losses"] == alone["losses"]
    assert eb.Ticket.load(out / "heads1-ffn0.4-seed3" / "ticket.json").ffn == \
        eb.Ticket.load(tmp_path / "earlybert" / "ticket.json").ffn


def test_results_table_and_figure(swept):
    out, results = swept
    assert read(out / "results.json") == json.loads(json.dumps(results))
    points, full = results["points"], read(out / "full-seed3" / "results.json")
    assert [(p["heads"], p["ffn_ratio"]) for p in points] == [(1, 0.4), (0.5, 0.4), (1, 0.7), (0.5, 0.7)]
    assert results["full"]["score"] == full["score"] and results["full"]["score_std"] is None
    for p in points:
        run = read(out / f"heads{p['heads']:g}-ffn{p['ffn_ratio']:g}-seed3" / "results.json")
        assert p["score"] == run["score"] and p["score_std"] is None and len(p["per_seed"]) == 1
        assert p["time_saved"] == pytest.approx(1 - run["total_step_time_s"] / full["total_step_time_s"])
    pairs = [(p["time_saved"], p["score"]) for p in points] + [(0.0, full["score"])]
    assert [p["pareto"] for p in points] == pareto_front(pairs)[:4]
    report = (out / "report.md").read_text()
    assert sweep_table(results) in report and "| 70% | time saved |" in report and "50% of heads pruned" in report
    assert (out / "tradeoff.png").stat().st_size > 0 and results["runs_finished"] == results["runs_total"] == 5


def test_pareto_front():
    assert pareto_front([(0.1, 90.0), (0.2, 89.0), (0.15, 88.0), (0.2, 89.0), (0.3, 70.0)]) == \
        [True, True, False, True, True]


class Killed(Exception):
    pass


def masked(table: str) -> str:
    """The table without what a clock measures (time saved, step time) or depends on it (the Pareto marks)."""
    return re.sub(r"-?\d+\.\d%|step time [\d.]+ s", "#", table.replace("*", ""))


def test_a_killed_sweep_resumes_to_the_same_table(swept, tiny_encoder, glue_dir, tmp_path, monkeypatch):
    _, reference = swept
    out = tmp_path / "sweep"
    config = base_config(tiny_encoder, glue_dir, out)
    real_save = train_module.save_checkpoint

    def die_in_the_third_point(accelerator, directory, progress):
        real_save(accelerator, directory, progress)
        if directory.parent.name == "heads1-ffn0.7-seed3":
            raise Killed

    monkeypatch.setattr(train_module, "save_checkpoint", die_in_the_third_point)
    with pytest.raises(Killed):
        sweep(config, HEADS, FFN)
    assert (out / "heads0.5-ffn0.4-seed3" / "results.json").exists() and not (out / "results.json").exists()
    assert (out / "heads1-ffn0.7-seed3" / "train_checkpoint").exists()
    monkeypatch.setattr(train_module, "save_checkpoint", real_save)
    with pytest.raises(ValueError, match="not empty; pass --resume"):
        sweep(config, HEADS, FFN)
    with pytest.raises(ValueError, match=r"other settings: heads \[1, 0.5\] in the run, \[1\] now"):
        sweep(config, [1], FFN, resume=True)
    resumed = sweep(config, HEADS, FFN, resume=True)
    assert masked(sweep_table(resumed)) == masked(sweep_table(reference))
    scores = [[row["score"] for row in p["per_seed"]] for p in resumed["points"]]
    assert scores == [[row["score"] for row in p["per_seed"]] for p in reference["points"]]
    assert not list(out.glob("*/train_checkpoint"))

    def never(*args, **kwargs):
        raise AssertionError("a finished sweep reruns nothing")

    monkeypatch.setattr(sweep_module, "finetune", never)
    assert sweep(config, HEADS, FFN, resume=True) == json.loads(json.dumps(resumed))


def test_bad_grids_fail_before_anything_is_written(tiny_encoder, glue_dir, tmp_path):
    config = base_config(tiny_encoder, glue_dir, tmp_path / "never")
    with pytest.raises(GridError, match="heads 13: cannot prune 13 of 4 heads"):
        sweep(config, [13], FFN)
    with pytest.raises(GridError, match="seeds: give at least one value"):
        sweep(config, HEADS, FFN, seeds=[])
    with pytest.raises(GridError, match="seeds 3: is given twice"):
        sweep(config, HEADS, FFN, seeds=[3, 3])
    assert not (tmp_path / "never").exists()


def cli_args(encoder, data, output) -> list[str]:
    return ["sweep", "--model", str(encoder), "--task", "sst2", "--data", str(data), "--output", str(output),
            "--batch-size", "8", "--lr", "5e-4", "--epochs", "2", "--earlybert-epochs", "1",
            "--search-epoch-fraction", "0.75", "--patience", "2"]


def test_the_command_sweeps_over_two_seeds(tiny_encoder, glue_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main([*cli_args(tiny_encoder, glue_dir, out), "--heads", "1", "--ffn-ratio", "0.3", "--seeds", "3,4"]) == 0
    printed = capsys.readouterr().out
    results = read(out / "results.json")
    point = results["points"][0]
    assert (point["heads"], point["ffn_ratio"], [r["seed"] for r in point["per_seed"]]) == (1, 0.3, [3, 4])
    assert point["score_std"] is not None and point["time_saved_std"] is not None and results["full"]["seeds"] == 2
    assert f"report: {out / 'report.md'}" in printed and sweep_table(results) in printed and " ± " in printed
    settings = read(out / "config.json")
    assert (settings["heads"], settings["ffn_ratios"], settings["seeds"]) == ([1], [0.3], [3, 4])
    assert settings["ticket"]["ffn_ratio"] == eb.TicketConfig().ffn_ratio  # what the search's early-bird rule watched
    assert len(results["search"]) == 2 and (out / "tradeoff.png").exists()


@pytest.mark.parametrize("flags,message", [
    (["--heads", "13"], "--heads 13: cannot prune 13 of 4 heads in a layer"),
    (["--heads", "0.5,1.5"], "--heads 1.5: a fraction of each layer's heads must be in [0, 1)"),
    (["--heads", "1,1"], "--heads 1: is given twice"),
    (["--heads", "2,two"], "--heads 'two': is not a number"),
    (["--heads", ""], "--heads: give at least one value"),
    (["--ffn-ratio", "0.3,1.2"], "--ffn-ratio 1.2: the fraction of FFN neurons pruned must be in [0, 1)"),
    (["--ffn-ratio", " , "], "--ffn-ratio: give at least one value"),
    (["--seeds", "1,2.5"], "--seeds 2.5: seeds are whole numbers"),
    (["--head-count", "1"], "sweep takes the heads to prune from --heads"),
])
def test_bad_grid_flags_exit_2_with_one_line_naming_the_flag(flags, message, tiny_encoder, glue_dir, tmp_path, capsys):
    out = tmp_path / "never"
    assert main([*cli_args(tiny_encoder, glue_dir, out), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("earlybert: error: ") and "\n" not in err and message in err
    assert not out.exists()


def test_target_saving_keeps_the_points_predicted_to_reach_it(swept, tiny_encoder, glue_dir, tmp_path,
                                                               monkeypatch):
    from pathlib import Path

    from earlybert import target as target_module

    def time_as_flops(base, task_info, coefficients, point):
        """Time follows FLOPs exactly (full step = the search's mean step, no overhead): the kept points do not
        depend on this machine's timings."""
        stage = read(Path(base.output) / f"search-seed{base.seed}" / "results.json")["stage"]
        step = stage["step_time_s"] / stage["steps"]
        return {"full_mean_step_s": step, "slim_mean_step_s": step, "ratio": 1.0, "pairs": 0, "batches": 0}

    monkeypatch.setattr(target_module, "overhead_share", lambda flop_ratio, time_ratio: 0.0)
    monkeypatch.setattr(target_module, "_calibrate", time_as_flops)
    grid = make_grid(HEADS, FFN)
    # the predictions after the fixture's search (same settings and seed: the same search), for a target between
    # the grid's points
    done, _ = swept
    savings = sorted(r["predicted_saving"] for r in target_module.predict(
        base_config(tiny_encoder, glue_dir, done), read(done / "search-seed3" / "results.json"),
        done / "search-seed3", grid)["rows"])
    target = (savings[1] + savings[2]) / 2
    out = tmp_path / "target"
    results = sweep(base_config(tiny_encoder, glue_dir, out), HEADS, FFN, select=target_module.reaching(target))
    rows = read(out / "selection.json")["rows"]
    assert [(r["heads"], r["ffn_ratio"]) for r in rows] == [(p.heads, p.ffn_ratio) for p in grid]
    assert sorted(r["predicted_saving"] for r in rows) == pytest.approx(savings)
    kept = [(r["heads"], r["ffn_ratio"]) for r in rows if r["predicted_saving"] >= target]
    assert len(kept) == 2 and [(p["heads"], p["ffn_ratio"]) for p in results["points"]] == kept
    assert results["selection"]["target"] == target and read(out / "config.json")["target_saving"] == target
    for p in grid:
        assert (out / f"{p.name}-seed3").exists() == ((p.heads, p.ffn_ratio) in kept)
    assert "Only the points predicted to save at least" in (out / "report.md").read_text()
    assert results["runs_total"] == 3


@pytest.mark.parametrize("value,message", [
    ("1.5", "--target-saving 1.5: give the fraction of fine-tuning time to save, in (0, 1)"),
    ("0.99", "--target-saving 0.99: unreachable on this machine; the most pruning in the grid (heads 0.5, FFN 0.7)"),
])
def test_sweep_target_saving_out_of_reach_exits_2_naming_the_flag(value, message, tiny_encoder, glue_dir, tmp_path,
                                                                  capsys):
    flags = ["--heads", "1,0.5", "--ffn-ratio", "0.4,0.7", "--target-saving", value]
    assert main([*cli_args(tiny_encoder, glue_dir, tmp_path / "out"), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("earlybert: error: ") and message in err
