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
SLICE_STEPS = 100  # optimizer steps each method runs before the next takes over (see compare)


def compare(base: FinetuneConfig, methods: list[str], seeds: list[int], resume: bool = False,
            overwrite: bool = False, slice_steps: int | None = SLICE_STEPS) -> list[dict]:
    """Run every method for every seed into base.output/<method>-seed<k>; finished runs are kept on resume.

    The methods of one seed take turns, `slice_steps` optimizer steps each (each pauses at a checkpoint and
    resumes where it stopped), so that a drift in the machine's speed while they run falls on all of them alike:
    run back to back, a 10% swing between one run and the next decides a time saving. None (or 0) runs each method
    to its end in turn. The random ticket copies the per-layer shape of the EarlyBERT ticket of the same seed when
    there is one, as in the paper ("a random ticket of the same shape"); it waits for that ticket to be drawn.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    if not seeds:
        raise ValueError("give at least one seed")
    if slice_steps is not None and slice_steps < 0:
        raise ValueError(f"slice_steps (--slice) must be >= 0, got {slice_steps}")
    from accelerate import PartialState

    root = RunFolder(base.output, resume, overwrite, is_main=PartialState().is_main_process).create()
    order = sorted(methods, key=lambda m: m == "random")  # random after earlybert, to copy its ticket's shape
    runs = []
    for seed in seeds:
        done: dict[str, dict] = {}
        while len(done) < len(order):
            for method in order:
                if method in done:
                    continue
                run_dir = root.path / f"{method}-seed{seed}"
                results_file = run_dir / "results.json"
                ticket_like = base.ticket_like
                earlybert_ticket = root.path / f"earlybert-seed{seed}" / "ticket.json"
                if method == "random" and ticket_like is None and "earlybert" in order:
                    if not earlybert_ticket.exists():
                        continue  # EarlyBERT's search has not drawn it yet
                    ticket_like = str(earlybert_ticket)
                config = replace(base, method=method, seed=seed, output=str(run_dir), ticket_like=ticket_like)
                if results_file.exists():
                    logger.info("%s seed %d: finished earlier, kept", method, seed)
                    done[method] = json.loads(results_file.read_text())
                    continue
                # one method alone has nothing to take turns with
                stop_after = (slice_steps or None) if len(order) > 1 else None
                result = finetune(config, resume=run_dir.exists(), stop_after=stop_after)
                if result is not None:
                    done[method] = result
                    _write_table(root)
        runs.extend(done[method] for method in order)
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
    note = ("The methods of each seed ran on the same machine, taking turns in slices of steps; time is the per-step protocol's total "
            "(forward, backward, optimizer; data loading excluded), EarlyBERT's including its search.")
    names = " and ".join(dict.fromkeys(data_name(r) for r in runs))
    figure = f"![score against training time, error bars over seeds]({FIGURE})"
    atomic_write_text(root.path / "report.md", f"# Comparison on {names}\n\n{table}\n{note}\n\n{figure}\n")
