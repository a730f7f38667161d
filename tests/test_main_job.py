"""The README's main job, read from README.md itself, runs on the SST-2 sample shipped in data/ (no ../shared)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main_job_command() -> str:
    """The first `earlybert finetune` line in a bash block of the README's "## Run" section."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    run_section = readme.split("\n## Run\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", run_section, flags=re.S)
    lines = [line for block in blocks for line in block.splitlines() if line.startswith("earlybert finetune ")]
    assert lines, "the README's Run section has no `earlybert finetune` command"
    return lines[0]


def test_readme_main_job_uses_only_what_the_repository_ships():
    command = main_job_command()
    data = re.search(r"--data (\S+)", command).group(1)
    assert not data.startswith(".."), f"the main job reads data outside the repository: {data}"
    assert (ROOT / data / "SST-2" / "train.tsv").is_file() and (ROOT / data / "SST-2" / "dev.tsv").is_file()
    shipped = sum(f.stat().st_size for f in (ROOT / "data").rglob("*") if f.is_file())
    assert shipped < 1_000_000
    assert (ROOT / "data" / "README.md").is_file()


def test_readme_main_job_runs_at_reduced_size(tmp_path):
    """The command exactly as written, run by bash from the repository root; flags appended after it shrink the
    run (argparse keeps the last value) and send the output to a temporary folder."""
    reduced = ("--max-train-samples 48 --max-eval-samples 32 --max-length 48 --batch-size 16 --search-max-steps 2 "
               "--earlybert-epochs 1 --checkpoint-every 0")
    line = f"{main_job_command()} {reduced} --output {tmp_path / 'run'}"
    # The README's commands run inside the activated virtualenv: its bin folder (python, earlybert) comes first.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "EARLYBERT_DATA": "/nonexistent"}
    done = subprocess.run(["bash", "-c", line], cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "run"
    results = json.loads((run / "results.json").read_text())
    assert results["method"] == "earlybert" and results["task"] == "sst2"
    assert results["stages"]["search"]["steps"] <= 2 and results["stages"]["train"]["steps"] == 3  # 48 / 16
    for name in ("report.md", "ticket.json", "mask_history.json", "config.json", "model/config.json"):
        assert (run / name).is_file(), name
