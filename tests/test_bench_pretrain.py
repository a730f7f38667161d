"""bench/pretrain.py's own logic: which runs share a process, and a run's time from the calibrated step times."""

from types import SimpleNamespace

import pytest

from conftest import bench_script


@pytest.fixture(scope="module")
def bench():
    with bench_script("pretrain") as module:
        yield module


def test_lanes_put_the_random_ticket_after_earlybert_whose_shape_it_copies(bench):
    assert bench.pretrain_lanes([3]) == [("full", "earlybert", "random")]
    for cores in ([0, 1], [0, 1, 2, 3]):
        lanes = bench.pretrain_lanes(cores)
        assert sorted(m for lane in lanes for m in lane) == ["earlybert", "full", "random"]
        (lane,) = [lane for lane in lanes if "random" in lane]  # it waits for EarlyBERT's ticket: same process
        assert lane.index("earlybert") < lane.index("random")


def test_a_runs_calibrated_time_charges_each_stage_its_own_step(bench):
    calibration = {"step_s": {"full@1": 1.0, "full@2": 3.0, "search@1": 1.1, "earlybert@1": 0.6,
                              "earlybert@2": 2.0, "random@1": 0.5, "random@2": 1.9}}
    earlybert = {"method": "earlybert", "stages": {"search": {"steps": 10}, "phase1": {"steps": 72},
                                                    "phase2": {"steps": 8}}}
    full = {"method": "full", "stages": {"phase1": {"steps": 90}, "phase2": {"steps": 10}}}
    assert bench.calibrated_seconds(full, calibration) == pytest.approx(90 + 30)
    assert bench.calibrated_seconds(earlybert, calibration) == pytest.approx(11 + 72 * 0.6 + 16)
    # a curve point part-way: the stages in the order the run took them
    assert bench.calibrated_seconds(earlybert, calibration, 0) == 0
    assert bench.calibrated_seconds(earlybert, calibration, 5) == pytest.approx(5.5)
    assert bench.calibrated_seconds(earlybert, calibration, 30) == pytest.approx(11 + 20 * 0.6)
    assert bench.calibrated_seconds(earlybert, calibration, 85) == pytest.approx(11 + 72 * 0.6 + 3 * 2.0)
    assert bench.calibrated_seconds(earlybert, calibration, 1000) == bench.calibrated_seconds(earlybert, calibration)


def test_fine_tuning_lanes_split_the_runs_without_overlap(bench, tmp_path, monkeypatch):
    """Each of n processes takes every n-th run; together they cover every (checkpoint, task, seed) once."""
    taken = []

    def fake_finetune(config, resume):
        taken.append(config.output)
        return {"score": 1.0}

    monkeypatch.setattr(bench, "finetune", fake_finetune)
    args = SimpleNamespace(runs=tmp_path, data=tmp_path, tasks="sst2,mrpc", seeds="1,2,3", max_train_samples=10,
                           max_eval_samples=None, finetune_lr=bench.DEFAULT_FINETUNE_LR, finetune_epochs=1.0)
    lanes = [bench.finetune_all(args, tmp_path / "theta0", (i, 3)) for i in range(3)]
    assert len(taken) == len(set(taken)) == 4 * 2 * 3
    whole = bench.finetune_all(args, tmp_path / "theta0")
    assert {m: {t: len(s) for t, s in tasks.items()} for m, tasks in whole.items()} == {
        m: {"sst2": 3, "mrpc": 3} for m in (*bench.METHODS, bench.NO_PRETRAINING)}
    assert sum(len(s) for lane in lanes for tasks in lane.values() for s in tasks.values()) == 24


def test_the_report_names_the_lanes_the_runs_trained_in_not_the_last_invocations(bench, tmp_path):
    assert bench.lanes_that_ran(tmp_path) == [bench.METHODS]  # no lane logs: one process
    (tmp_path / "lanes").mkdir()
    for lane in bench.pretrain_lanes([0, 1]):
        (tmp_path / "lanes" / f"pretrain-{'-'.join(lane)}.log").write_text("")
    (tmp_path / "lanes" / "finetune-0-of-2.log").write_text("")
    assert sorted(bench.lanes_that_ran(tmp_path)) == sorted(bench.pretrain_lanes([0, 1]))


def test_qnli_trains_on_a_fixed_split_of_its_dev_set_and_is_scored_on_the_rest(bench, tmp_path):
    """../shared/data has no QNLI training file: the downstream runs read the split finetune_glue.py uses, and the
    majority-class floor comes from its held-out part, not from the whole dev set."""
    source = tmp_path / "data" / "glue" / "QNLI"
    source.mkdir(parents=True)
    rows = [f"{i}\tquestion {i}?\tsentence {i}.\t{'entailment' if i % 3 else 'not_entailment'}" for i in range(2011)]
    (source / "dev.tsv").write_text("\n".join(["index\tquestion\tsentence\tlabel", *rows]) + "\n")
    args = SimpleNamespace(runs=tmp_path / "runs", data=tmp_path / "data")
    assert bench.glue_root(args, "sst2") == tmp_path / "data" / "glue"
    root = bench.glue_root(args, "qnli")
    train = (root / "QNLI" / "train.tsv").read_text().splitlines()[1:]
    held_out = (root / "QNLI" / "dev.tsv").read_text().splitlines()[1:]
    assert (len(train), len(held_out)) == (2000, 11) and sorted(train + held_out) == sorted(rows)
    assert bench.glue_root(args, "qnli") == root and (root / "QNLI" / "train.tsv").read_text().splitlines()[1:] == train
    labels = [r.rsplit("\t", 1)[1] for r in held_out]
    assert bench.floor("qnli", root) == pytest.approx(100 * max(map(labels.count, set(labels))) / 11)
