"""bench/finetune_glue.py's own logic: training-set caps, the GLUE tarball a GPU machine brings, the work a
(task, seed) group costs (what its time budget is scaled by), and the summary the issue's targets read."""

import tarfile

import pytest

from conftest import bench_script


@pytest.fixture(scope="module")
def glue():
    with bench_script("finetune_glue") as module:
        yield module


def test_training_set_caps(glue):
    assert glue.parse_samples("all") == {}
    assert glue.parse_samples("sst2=10000,cola=64") == {"sst2": 10000, "cola": 64}
    for bad in ("sst2", "sst2=0", "mnli=5", "sst2=ten"):
        with pytest.raises(SystemExit, match="--train-samples"):
            glue.parse_samples(bad)


def test_a_tarball_unpacks_once_and_a_folder_is_taken_as_it_is(glue, tmp_path):
    source = tmp_path / "src" / "RTE"
    source.mkdir(parents=True)
    (source / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n")
    with tarfile.open(tmp_path / "glue.tar.xz", "w:xz") as tar:
        tar.add(source / "train.tsv", arcname="RTE/train.tsv")
    root = glue.unpacked(tmp_path / "glue.tar.xz", tmp_path / "runs" / "data")
    assert (root / "RTE" / "train.tsv").read_text() == (source / "train.tsv").read_text()
    (root / "RTE" / "train.tsv").write_text("kept")
    assert glue.unpacked(tmp_path / "glue.tar.xz", tmp_path / "runs" / "data") == root  # not unpacked again
    assert (root / "RTE" / "train.tsv").read_text() == "kept"
    assert glue.unpacked(tmp_path / "src", tmp_path / "unused") == tmp_path / "src"


def test_group_work_counts_every_methods_epochs(glue, tmp_path):
    (tmp_path / "train.tsv").write_text("header\n" + "row\n" * 100)
    # 100 rows -> 4 batches of 32 -> 128 examples per epoch; full 3 + EarlyBERT 2.2 + random 2 epochs
    assert glue.group_units(tmp_path, None, glue.CORE) == pytest.approx(128 * 7.2)
    assert glue.group_units(tmp_path, 40, ["layerdrop"]) == pytest.approx(64 * 3)


def test_summary_pairs_methods_of_the_same_task_and_seed(glue):
    def run(task, method, seed, score, time, search=None):
        stages = {"train": {"steps": 10}}
        if method == "earlybert":
            stages["search"] = search or {"steps": 5, "budget": 5, "stop_reason": "budget"}
        return {"task": task, "method": method, "seed": seed, "score": score, "total_step_time_s": time,
                "stages": stages, "fraction_saved_vs_estimated_full": None}

    runs = [run("sst2", "full", 1, 90, 100), run("sst2", "earlybert", 1, 89, 50), run("sst2", "random", 1, 85, 45),
            run("sst2", "full", 2, 91, 100), run("sst2", "earlybert", 2, 91, 60), run("sst2", "random", 2, 88, 45),
            run("rte", "full", 1, 60, 10), run("rte", "earlybert", 1, 63, 5), run("rte", "random", 1, 55, 5),
            run("rte", "full", 2, 60, 10)]  # rte seed 2 is incomplete: left out
    s = glue.summary(runs)
    assert s["tasks"] == ["sst2", "rte"] and s["seeds"] == [1, 2] and s["pairs"] == 3
    assert s["earlybert_minus_full"] == pytest.approx(((-1 + 0) / 2 + 3) / 2)  # mean over tasks of task means
    assert s["earlybert_minus_random"] == pytest.approx(((4 + 3) / 2 + 8) / 2)
    assert s["time_saved"] == pytest.approx(((0.5 + 0.4) / 2 + 0.5) / 2)
    assert s["earlybert_minus_full_all_pairs"]["n"] == 3
    # random saved 0.55 and 0.55 on sst2 (spread 0), one pair on rte (no spread): pooled std 0
    assert s["random_time_saved_std_within_task"] == pytest.approx(0.0)
    assert "single_run_estimate_minus_measured" not in s  # no run carried an estimate
    runs[2]["total_step_time_s"] = 35  # sst2 random seed 1 saves 0.65 against seed 2's 0.55
    runs[1]["fraction_saved_vs_estimated_full"], runs[4]["fraction_saved_vs_estimated_full"] = 0.52, 0.35
    s = glue.summary(runs)
    assert s["random_time_saved_std_within_task"] == pytest.approx(0.1 / 2 ** 0.5)
    e = s["single_run_estimate_minus_measured"]
    assert (e["within_3_points"], e["n"]) == (1, 2) and e["max_abs"] == pytest.approx(0.05)


def test_variants_are_compared_with_full_of_the_same_task_and_seed(glue):
    runs = [{"task": "cola", "method": "full", "seed": s, "score": 20.0 + s, "total_step_time_s": 100.0} for s in (1, 2)]
    variants = [{"task": "cola", "variant": "full-short", "method": "full", "seed": 1, "score": 15.0,
                 "total_step_time_s": 66.0},
                {"task": "cola", "variant": "full-short", "method": "full", "seed": 2, "score": 18.0,
                 "total_step_time_s": 68.0},
                {"task": "stsb", "variant": "earlybert-long", "method": "earlybert", "seed": 1, "score": 70.0,
                 "total_step_time_s": 50.0}]  # no full run of stsb: scored, not compared
    out = glue.variant_summary(runs, variants)
    short = out["cola"]["full-short"]
    assert short["seeds"] == [1, 2] and short["minus_full"] == [-6.0, -4.0]
    assert short["time_saved"] == pytest.approx([0.34, 0.32])
    assert out["stsb"]["earlybert-long"]["minus_full"] == [] and out["stsb"]["earlybert-long"]["score"] == [70.0]
    assert set(glue.VARIANTS) == set(glue.VARIANT_EPOCHS)


def test_a_variant_is_paired_with_its_random_twin_of_the_same_task_and_seed(glue):
    runs = [{"task": t, "method": "full", "seed": 1, "score": 50.0, "total_step_time_s": 100.0} for t in ("cola", "rte")]
    variants = [{"task": t, "variant": v, "method": v.split("-")[0], "seed": 1, "score": score,
                 "total_step_time_s": 55.0}
                for t, v, score in [("cola", "earlybert-lr4x", 49.0), ("cola", "random-lr4x", 45.0),
                                    ("rte", "earlybert-lr4x", 52.0), ("rte", "random-lr4x", 51.0),
                                    ("rte", "earlybert-long", 53.0)]]  # earlybert-long has no random twin
    variants.append({"task": "cola", "variant": "full-lr2x", "method": "full", "seed": 1, "score": 51.0,
                     "total_step_time_s": 110.0})  # same sitting as the variants: the time reference where it ran
    out = glue.variant_summary(runs, variants)
    assert out["cola"]["earlybert-lr4x"]["time_saved_same_sitting"] == pytest.approx([0.5])
    assert "time_saved_same_sitting" not in out["rte"]["earlybert-lr4x"]
    assert out["cola"]["earlybert-lr4x"]["minus_random"] == [4.0]
    assert "minus_random" not in out["rte"]["earlybert-long"]
    pair = glue.variant_pairs(out, "earlybert-lr4x")
    assert pair["tasks"] == 2 and pair["minus_full"]["mean"] == pytest.approx(0.5)
    assert pair["minus_random"]["mean"] == pytest.approx(2.5) and pair["time_saved"] == pytest.approx(0.45)
    assert pair["time_saved_same_sitting"] == pytest.approx(0.5)
    assert glue.variant_pairs(out, "earlybert-heads") is None



def _args(tmp_path, **overrides):
    from argparse import Namespace

    settings = dict(lr=4e-5, max_length=128, train_samples="sst2=10000", slice=100, model=None, pad_to_multiple_of=None,
                    runs=str(tmp_path / "runs"), output=str(tmp_path / "results" / "table"))
    return Namespace(**{**settings, **overrides})


def test_a_fresh_checkout_continues_the_table_from_its_committed_json(glue, tmp_path):
    import json

    args = _args(tmp_path)
    runs = [{"task": "rte", "method": m, "seed": 1, "score": 60.0 + i, "total_step_time_s": 10.0}
            for i, m in enumerate(("full", "earlybert", "random"))]
    variant = {"task": "rte", "method": "full", "seed": 1, "score": 61.0, "total_step_time_s": 12.0,
               "variant": "full-lr2x"}
    (tmp_path / "results").mkdir()
    ledger = tmp_path / "results" / "table.json"
    ledger.write_text(json.dumps({"settings": vars(args), "machine": {"cpu": "AMD EPYC", "threads": 1},
                                  "groups": {"cola/seed1": {"cpu": "Intel Xeon"}}, "runs": runs,
                                  "variant_runs": [variant]}))
    assert glue.restore(_args(tmp_path, output=str(tmp_path / "none"))) == {}  # no ledger: nothing to continue

    groups = glue.restore(args)
    restored = glue.collect(tmp_path / "runs")
    assert [(r["method"], r["score"]) for r in restored] == [("full", 60.0), ("earlybert", 61.0), ("random", 62.0)]
    assert glue.collect_variants(tmp_path / "runs") == [variant]  # its folder carries the variant's name again
    # a ledger written before groups were kept: its runs ran on its last sitting's machine
    assert groups == {"cola/seed1": {"cpu": "Intel Xeon"}, "rte/seed1": {"cpu": "AMD EPYC", "threads": 1}}

    # a run already in the folder is the newer one: kept as it is
    kept = tmp_path / "runs" / "rte" / "full-seed1" / "results.json"
    kept.write_text(json.dumps({**runs[0], "score": 70.0}))
    glue.restore(args)
    assert json.loads(kept.read_text())["score"] == 70.0

    # a table made with other settings is not extended: one line naming the flag, nothing written
    with pytest.raises(SystemExit, match=r"table\.json holds a table made with --lr 4e-05 \(this run: 2e-05\)"):
        glue.restore(_args(tmp_path, lr=2e-5, runs=str(tmp_path / "other")))
    assert not (tmp_path / "other").exists()


def test_the_report_names_each_groups_machine_only_when_they_differ(glue):
    one = {"cpu": "AMD EPYC", "threads": 1, "mixed_precision": "bf16"}
    assert glue._machines_line({"rte/seed1": one, "cola/seed1": one}) == []
    line, = glue._machines_line({"rte/seed1": one, "cola/seed1": {**one, "cpu": "Intel Xeon"}})
    assert "AMD EPYC, 1 threads, bf16: rte/seed1" in line and "Intel Xeon, 1 threads, bf16: cola/seed1" in line


def test_redo_takes_a_spoilt_group_out_of_the_table_and_keeps_it_on_record(glue, tmp_path):
    import json

    args = _args(tmp_path, redo="rte:2", redo_reason="trained beside other work")
    def run(method, seed, score, time):  # what a run's results.json holds, as far as the table reads it
        stages = {"train": {"steps": 10}, **({"search": {"steps": 5, "budget": 5, "stop_reason": "budget"}}
                                             if method == "earlybert" else {})}
        return {"task": "rte", "method": method, "seed": seed, "score": score, "total_step_time_s": time,
                "headline_metric": "accuracy", "stages": stages, "fraction_saved_vs_estimated_full": None,
                "theoretical_fraction_saved_flops": None if method == "full" else 0.5}

    runs = [run(m, seed, 60.0 + seed, 10.0 - i) for seed in (1, 2)
            for i, m in enumerate(("full", "earlybert", "random"))]
    layerdrop = run("layerdrop", 2, 50.0, 8.0)
    (tmp_path / "results").mkdir()
    ledger = tmp_path / "results" / "table.json"
    ledger.write_text(json.dumps({"settings": {}, "groups": {"rte/seed1": {}, "rte/seed2": {}},
                                  "runs": [*runs, layerdrop], "variant_runs": []}))
    glue.restore(args)  # the runs folder as a fresh checkout has it
    assert len(glue.collect(tmp_path / "runs")) == 7

    with pytest.raises(SystemExit, match="--redo needs --redo-reason"):
        glue.redo(_args(tmp_path, redo="rte:2", redo_reason=None))
    with pytest.raises(SystemExit, match=r"--redo takes TASK:SEED.*got 'rte2'"):
        glue.redo(_args(tmp_path, redo="rte2", redo_reason="x"))
    with pytest.raises(SystemExit, match="has no runs of cola seed 2"):
        glue.redo(_args(tmp_path, redo="cola:2", redo_reason="x"))
    assert json.loads(ledger.read_text())["runs"] == [*runs, layerdrop]  # a refused --redo changes nothing

    discarded, = glue.redo(args)
    assert discarded["runs"] == runs[3:] and discarded["reason"] == "trained beside other work"
    saved = json.loads(ledger.read_text())
    assert saved["runs"] == [*runs[:3], layerdrop] and saved["groups"] == {"rte/seed1": {}}
    assert saved["discarded"] == [discarded]
    left = glue.collect(tmp_path / "runs")  # the group's folders moved aside, where the table does not read
    assert [(r["method"], r["seed"]) for r in left] == [("full", 1), ("earlybert", 1), ("random", 1), ("layerdrop", 2)]
    moved = tmp_path / "runs" / "discarded" / discarded["when"] / "rte"
    assert sorted(p.name for p in moved.iterdir()) == ["earlybert-seed2", "full-seed2", "random-seed2"]

    # the next table keeps the record, in the JSON and in the report
    glue.write_results(_args(tmp_path, redo=None, redo_reason=None), left, 0.0, "no", groups={"rte/seed1": {}})
    assert json.loads(ledger.read_text())["discarded"] == [discarded]
    assert "Discarded for a new measurement: rte seed 2" in ledger.with_suffix(".md").read_text()


def test_the_table_written_after_redo_names_the_command_that_continues_it(glue):
    argv = ["bench/finetune_glue.py", "--lr", "4e-5", "--redo", "rte:2", "--redo-reason", "a --redo b",
            "--redo=cola:1", "--output", "x"]
    assert glue.without_redo(argv) == ["bench/finetune_glue.py", "--lr", "4e-5", "--output", "x"]
