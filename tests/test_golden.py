"""Golden runs: tiny runs of every method whose results must not change when code only moves.

Every fine-tuning method (full, earlybert, random, layerdrop) and both pre-training methods run on a tiny encoder
and fixture data; their scores, tickets, step counts and per-step losses are compared with tests/golden/runs.json.
Tickets and step counts must match exactly; floats to 1e-5 relative, which a refactor that changes anything (an
RNG draw, the order of an update, a schedule) exceeds by orders of magnitude, while other CPUs' kernels, whose
last bits differ, stay well inside it.

A deliberate change of behaviour regenerates the file: EARLYBERT_GOLDEN_UPDATE=1 python -m pytest tests/test_golden.py
(and the commit says why).
"""

import json
import math
import os
import random
from pathlib import Path

import pytest
from transformers import BertConfig

from earlybert.finetune import FinetuneConfig, finetune
from earlybert.pretrain import PretrainConfig, pretrain

from conftest import WORDS, write_sst2_like, write_tiny_encoder

GOLDEN = Path(__file__).parent / "golden" / "runs.json"
REL = 1e-5


def record(results: dict, folder: Path, score_key: str) -> dict:
    """What must not change: the score, step counts, per-step losses, the ticket and the model's size."""
    ticket = json.loads((folder / "ticket.json").read_text()) if (folder / "ticket.json").exists() else None
    return {
        score_key: results[score_key],
        "steps": {name: stage["steps"] for name, stage in results["stages"].items()},
        "losses": results["losses"],
        "ticket": None if ticket is None else {"heads": ticket["heads"], "ffn": ticket["ffn"]},
        "parameters": results["parameters"],
    }


def run_all(root: Path) -> dict:
    encoder = write_tiny_encoder(root / "encoder")
    data = write_sst2_like(root / "glue")
    records = {}
    for method in ("full", "earlybert", "random", "layerdrop"):
        out = root / f"finetune-{method}"
        config = FinetuneConfig(model=str(encoder), task="sst2", data=str(data), output=str(out), method=method,
                                batch_size=8, lr=3e-3, epochs=3, earlybert_epochs=2, search_epoch_fraction=0.75,
                                patience=2, checkpoint_every=2, seed=3)
        records[f"finetune-{method}"] = record(finetune(config), out, "metrics")

    rng = random.Random(0)
    (root / "text.txt").write_text("\n\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30)))
                                              for _ in range(120)) + "\n")
    (root / "config.json").write_text(BertConfig(vocab_size=23, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                 intermediate_size=37, max_position_embeddings=64).to_json_string())
    for method in ("full", "earlybert"):
        out = root / f"pretrain-{method}"
        config = PretrainConfig(config=str(root / "config.json"), tokenizer=str(encoder), text=(str(root / "text.txt"),),
                                output=str(out), method=method, steps=12, seq_len=(16, 32), batch_size=(8, 4),
                                lr=(1e-3, 1e-3), warmup_ratio=(0.1, 0.1), held_out=0.1, search_steps=4, patience=2,
                                checkpoint_every=2, cache_dir=str(root / "cache"))
        records[f"pretrain-{method}"] = record(pretrain(config), out, "held_out")
    return records


def assert_same(actual, expected, where: str = "") -> None:
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), f"{where}: keys differ"
        for key in expected:
            assert_same(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{where}: lengths differ"
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_same(a, e, f"{where}[{i}]")
    elif isinstance(expected, float):
        assert math.isclose(actual, expected, rel_tol=REL, abs_tol=1e-9), f"{where}: {actual} != {expected}"
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


def test_golden_runs_are_unchanged(tmp_path):
    records = json.loads(json.dumps(run_all(tmp_path)))
    if os.environ.get("EARLYBERT_GOLDEN_UPDATE"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(records, indent=1, sort_keys=True) + "\n")
        pytest.skip("golden runs regenerated")
    assert GOLDEN.exists(), "tests/golden/runs.json is missing; regenerate it with EARLYBERT_GOLDEN_UPDATE=1"
    assert_same(records, json.loads(GOLDEN.read_text()))
