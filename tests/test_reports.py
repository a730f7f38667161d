"""What the user got: trained vs full model in report.md and results.json, compare's table and figure, Fig. 1 axes."""

import json

import pytest

from earlybert import report
from earlybert.cli import main

from conftest import WORDS

FAST = ["--batch-size", "16", "--epochs", "1", "--earlybert-epochs", "1", "--search-max-steps", "4",
        "--record-every", "1", "--max-train-samples", "48", "--max-eval-samples", "40", "--checkpoint-every", "0"]


@pytest.fixture(scope="module")
def earlybert_run(tmp_path_factory):
    from conftest import write_sst2_like, write_tiny_encoder

    root = tmp_path_factory.mktemp("what_you_got")
    encoder, data = write_tiny_encoder(root / "encoder"), write_sst2_like(root / "glue")
    assert main(["finetune", "--model", str(encoder), "--task", "sst2", "--data", str(data), "--output",
                 str(root / "run"), "--patience", "10", *FAST, "--search-epoch-fraction", "1"]) == 0
    return root / "run"


def test_report_and_results_compare_the_trained_model_with_the_full_one(earlybert_run):
    results = json.loads((earlybert_run / "results.json").read_text())
    got = results["trained_vs_full"]
    params, disk, infer = got["parameters"], got["size_on_disk_bytes"], got["inference_s_per_batch"]
    assert params["trained"] == results["parameters"] < params["full"]
    assert params["ratio"] == pytest.approx(params["trained"] / params["full"])
    weights = (earlybert_run / "model" / "model.safetensors").stat().st_size
    assert disk["trained"] == weights < disk["full"] and disk["ratio"] == pytest.approx(weights / disk["full"])
    assert infer["batches"] == 2 and infer["batch_size"] == 16  # the 24 evaluation sentences in batches of 16
    assert len(infer["per_repetition"]["trained"]) == len(infer["per_repetition"]["full"]) == infer["repetitions"] >= 3
    assert infer["ratio"] == pytest.approx(infer["trained"] / infer["full"]) and infer["trained"] > 0
    text = (earlybert_run / "report.md").read_text()
    assert "## What you got: the trained model against the full one" in text
    assert f"| parameters | {params['trained'] / 1e6:.2f} M | {params['full'] / 1e6:.2f} M | {params['ratio']:.2f} |" in text
    assert f"| inference time per evaluation batch | {infer['trained'] * 1e3:.1f} ms " in text
    assert f"{infer['ratio']:.2f} |" in text and "alternating order" in text


def test_mask_distance_axes_show_the_recorded_steps_as_integers(earlybert_run, monkeypatch):
    history = json.loads((earlybert_run / "mask_history.json").read_text())
    figures = []
    monkeypatch.setattr(report, "_save", lambda fig, path: figures.append(fig))
    report.plot_mask_distance(history, earlybert_run / "unused.png")
    steps = [str(s) for s in history["steps"]]
    assert len(steps) == 3  # one record per step of a 3-step search
    for ax in figures[0].axes[:2]:
        assert [t.get_text() for t in ax.get_xticklabels()] == steps
        assert [t.get_text() for t in ax.get_yticklabels()] == steps
    assert report._tick_positions(50) == [0, 7, 14, 21, 28, 35, 42, 49]
    assert report._tick_positions(3) == [0, 1, 2]


def test_compare_on_user_files_names_the_data_lists_full_first_and_draws_its_figure(tiny_encoder, tmp_path, capsys):
    import random

    rng = random.Random(0)
    for name, n in (("reviews_train.csv", 48), ("reviews_dev.csv", 24)):
        rows = []
        for _ in range(n):
            label = rng.randint(0, 1)
            rows.append(f"the film was {rng.choice(WORDS[:4] if label else WORDS[4:8])},{label}")
        (tmp_path / name).write_text("review,stars\n" + "\n".join(rows) + "\n")
    out = tmp_path / "cmp"
    argv = ["compare", "--model", str(tiny_encoder), "--train-file", str(tmp_path / "reviews_train.csv"),
            "--validation-file", str(tmp_path / "reviews_dev.csv"), "--text-columns", "review", "--label-column",
            "stars", "--methods", "earlybert,full", "--seeds", "1,2", "--output", str(out), *FAST]
    capsys.readouterr()
    assert main(argv) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    rows = [line for line in printed if line.startswith("| reviews_train.csv / reviews_dev.csv |")]
    assert [r.split(" | ")[1] for r in rows] == ["full", "earlybert"]  # full first, whatever the order asked
    assert printed[-1] == rows[-1]  # the table ends the output
    where = printed.index(f"report: {out / 'report.md'}; figure: {out / 'comparison.png'}")
    assert printed[where + 1:] == ["", *printed[where + 2:]] and printed[where + 2].startswith("| task | method |")
    text = (out / "report.md").read_text()
    assert text.startswith("# Comparison on reviews_train.csv / reviews_dev.csv\n") and "custom" not in text
    assert "![score against training time, error bars over seeds](comparison.png)" in text
    assert (out / "comparison.png").stat().st_size > 10_000


def test_comparison_figure_has_error_bars_over_seeds(tmp_path, monkeypatch):
    runs = [{"task": "sst2", "data": "sst2", "method": m, "seed": s, "score": score, "headline_metric": "accuracy",
             "total_step_time_s": t, "theoretical_fraction_saved_flops": None}
            for m, s, score, t in (("earlybert", 1, 80.0, 10.0), ("earlybert", 2, 82.0, 12.0), ("full", 1, 85.0, 30.0),
                                   ("full", 2, 85.0, 30.0))]
    figures = []
    monkeypatch.setattr(report, "_save", lambda fig, path: figures.append(fig))
    report.plot_comparison(runs, tmp_path / "c.png")
    ax = figures[0].axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["full (2 seeds)", "earlybert (2 seeds)"]
    assert ax.get_title() == "sst2: score against training time" and ax.get_ylabel() == "accuracy"
    earlybert = ax.containers[1]  # ErrorbarContainer: (line, caplines, (x bars, y bars))
    x, y = earlybert.lines[0].get_data()
    assert (x[0], y[0]) == (11.0, 81.0)
    xbar, ybar = earlybert.lines[2]
    assert xbar.get_segments()[0][:, 0].tolist() == pytest.approx([11 - 2**0.5, 11 + 2**0.5])
    assert ybar.get_segments()[0][:, 1].tolist() == pytest.approx([81 - 2**0.5, 81 + 2**0.5])
