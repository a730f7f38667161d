"""bench/ffn_scope.py end to end on tiny runs: each table run's ticket redrawn within each layer from its own
gate coefficients, trained with the table run's settings, paired with the table run's own score."""

import json

import pytest

from earlybert.finetune import FinetuneConfig, finetune
from earlybert.ticket import Ticket

from conftest import bench_script


@pytest.fixture(scope="module")
def bench():
    with bench_script("ffn_scope") as module:
        yield module


def test_layerwise_tickets_are_cut_from_the_table_runs_own_coefficients(bench, tiny_encoder, glue_dir, tmp_path):
    table = tmp_path / "table"
    for seed in (1, 2):
        finetune(FinetuneConfig(model=str(tiny_encoder), task="sst2", data=str(glue_dir), batch_size=8, lr=5e-4,
                                epochs=2, earlybert_epochs=1, search_epoch_fraction=0.75, patience=2, seed=seed,
                                output=str(table / "sst2" / f"earlybert-seed{seed}"), method="earlybert"))
    argv = ["--table-runs", str(table), "--tasks", "sst2", "--seeds", "1,2", "--runs", str(tmp_path / "runs"),
            "--output", str(tmp_path / "out" / "scope")]
    bench.main(argv)
    result = json.loads((tmp_path / "out" / "scope.json").read_text())
    for pair in result["pairs"]:
        seed = pair["seed"]
        global_ = Ticket.load(table / "sst2" / f"earlybert-seed{seed}" / "ticket.json")
        layer = Ticket.load(tmp_path / "runs" / "sst2" / f"earlybert-layer-seed{seed}" / "ticket.json")
        table_score = json.loads((table / "sst2" / f"earlybert-seed{seed}" / "results.json").read_text())["score"]
        assert pair["global"] == table_score and pair["kept_ffn"]["global"] == global_.kept_ffn
        assert abs(sum(layer.kept_ffn) - sum(global_.kept_ffn)) < len(layer.kept_ffn)  # as many, up to rounding
        assert len(set(layer.ffn_sizes)) == 1 and len(set(layer.kept_ffn)) == 1  # equal layers keep equal widths
        assert layer.heads == global_.heads  # heads are always ranked within their layer
        for scores, kept in zip(global_.ffn_scores, layer.ffn):  # each layer keeps its own largest |c|
            pruned = set(range(len(scores))) - set(kept)
            assert pruned and min(abs(scores[i]) for i in kept) >= max(abs(scores[i]) for i in pruned)
    assert result["summary"]["pairs"] == 2 and "layer-wise - global" in (tmp_path / "out" / "scope.md").read_text()
    bench.main(argv)  # a rerun reads the finished runs back
