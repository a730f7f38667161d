"""Several methods on the same data, seeds and hardware, one table (the paper's Table 2)."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

from .finetune import METHODS, FinetuneConfig, RunFolder, finetune
from .report import comparison_table, data_name, plot_comparison
from .runs import atomic_write_text

logger = logging.getLogger(__name__)

FIGURE = "comparison.png"  # next to the comparison's report.md


def compare(base: FinetuneConfig, methods: list[str], seeds: list[int], resume: bool = False,
            overwrite: bool = False) -> list[dict]:
    """Run every method for every seed into base.output/<method>-seed<k>; finished runs are kept on resume.

    The random ticket copies the per-layer shape of the EarlyBERT ticket of the same seed when there is one,
    as in the paper ("a random ticket of the same shape").
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    if not seeds:
        raise ValueError("give at least one seed")
    from accelerate import PartialState

    root = RunFolder(base.output, resume, overwrite, is_main=PartialState().is_main_process).create()
    order = sorted(methods, key=lambda m: m == "random")  # random after earlybert, to copy its ticket's shape
    runs = []
    for seed in seeds:
        for method in order:
            run_dir = root.path / f"{method}-seed{seed}"
            results_file = run_dir / "results.json"
            ticket_like = base.ticket_like
            earlybert_ticket = root.path / f"earlybert-seed{seed}" / "ticket.json"
            if method == "random" and ticket_like is None and earlybert_ticket.exists():
                ticket_like = str(earlybert_ticket)
            config = replace(base, method=method, seed=seed, output=str(run_dir), ticket_like=ticket_like)
            if results_file.exists():
                logger.info("%s seed %d: finished earlier, kept", method, seed)
                runs.append(json.loads(results_file.read_text()))
                continue
            runs.append(finetune(config, resume=run_dir.exists()))
            _write_table(root)
    _write_table(root)
    return runs


def _write_table(root: RunFolder) -> None:
    """The table over every finished run in the folder, this call's and earlier calls' (other seeds) alike."""
    runs = [json.loads(p.read_text()) for p in sorted(root.path.glob("*-seed*/results.json"))]
    if not runs or not root.is_main:
        return
    rows, table = comparison_table(runs)
    root.write_json("comparison.json", {"runs": runs, "rows": rows})
    plot_comparison(runs, root.path / FIGURE)
    note = ("Runs were executed one after another on the same machine; time is the per-step protocol's total "
            "(forward, backward, optimizer; data loading excluded), EarlyBERT's including its search.")
    names = " and ".join(dict.fromkeys(data_name(r) for r in runs))
    figure = f"![score against training time, error bars over seeds]({FIGURE})"
    atomic_write_text(root.path / "report.md", f"# Comparison on {names}\n\n{table}\n{note}\n\n{figure}\n")
