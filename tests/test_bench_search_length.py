"""bench/search_length.py's summary: per stop time, the score over seeds, its paired difference from full
fine-tuning of the same seeds (only where full ran), and the estimated saving."""

import pytest

from conftest import bench_script


@pytest.fixture(scope="module")
def bench():
    with bench_script("search_length") as module:
        yield module


def ablation(scores, saved):
    return {"points": [{"stop_at": f, "steps": n, "score": s, "time_saved_estimated": t, "theoretical_saved": t + 0.1}
                       for f, n, s, t in zip((0.2, 1.0), (10, 50), scores, saved)]}


def test_rows_pair_each_seed_with_its_own_full_run(bench):
    rows = bench.summarise({1: ablation((10.0, 20.0), (0.45, 0.2)), 2: ablation((14.0, 26.0), (0.43, 0.18))},
                           {1: 22.0, 2: None})  # seed 2's full run is missing: it pairs nothing
    short, long = rows
    assert (short["stop_at"], short["steps"], long["steps"]) == (0.2, 10, 50)
    assert short["score"] == pytest.approx(12.0) and short["score_std"] == pytest.approx(2 ** 1.5)
    assert short["minus_full"] == pytest.approx(-12.0) and short["minus_full_n"] == 1
    assert long["minus_full"] == pytest.approx(-2.0) and long["time_saved_estimated"] == pytest.approx(0.19)
    assert bench.summarise({1: ablation((10.0, 20.0), (0.45, 0.2))}, {1: None})[0]["minus_full"] is None
