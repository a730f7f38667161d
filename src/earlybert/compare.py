"""Several methods on the same data, seeds and hardware, one table (the paper's Table 2)."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import replace

import torch

from .finetune import METHODS, FinetuneConfig, RunFolder, finetune
from .report import comparison_table, data_name, plot_comparison
from .runs import atomic_write_text

logger = logging.getLogger(__name__)

FIGURE = "comparison.png"  # next to the comparison's report.md
SLICE_STEPS = 100  # optimizer steps per turn of the longest method, the others in proportion (see compare)


def compare(base: FinetuneConfig, methods: list[str], seeds: list[int], resume: bool = False,
            overwrite: bool = False, slice_steps: int | None = SLICE_STEPS) -> list[dict]:
    """Run every method for every seed into base.output/<method>-seed<k>; finished runs are kept on resume.

    The methods of one seed take turns (each pauses at a checkpoint and resumes where it stopped), so that a drift
    in the machine's speed while they run falls on all of them alike: run back to back, a 10% swing between one
    run and the next decides a time saving. A turn is `slice_steps` optimizer steps for the longest method and a
    proportional share for the others (EarlyBERT's 2 epochs and its search against full's 3), so that all of them
    run through the same stretch of time; None (or 0) runs each method to its end in turn. The random ticket copies
    the per-layer shape of the EarlyBERT ticket of the same seed when there is one, as in the paper ("a random
    ticket of the same shape"); when EarlyBERT is among the methods, it waits for that ticket to be drawn.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    if not seeds:
        raise ValueError("give at least one seed")
    if slice_steps is not None and slice_steps < 0:
        raise ValueError(f"slice_steps (--slice) must be >= 0, got {slice_steps}")
    from accelerate import PartialState

    # cpu=True without a GPU, as every run's own Accelerator: under torchrun the processes then form one gloo group
    # (without it each would take itself for the only one and train its own copy into the same folder)
    state = PartialState(cpu=not torch.cuda.is_available())
    root = RunFolder(base.output, resume, overwrite, is_main=state.is_main_process).create()
    order = sorted(methods, key=lambda m: m == "random")  # random after earlybert, to copy its ticket's shape
    turns = _turns(base, order, slice_steps)
    turn = slice_steps if any(turns.values()) else None  # what the report says: turns taken or not
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
                earlybert_dir = root.path / f"earlybert-seed{seed}"
                if method == "random" and ticket_like is None:
                    if (earlybert_dir / "ticket.json").exists():
                        ticket_like = str(earlybert_dir / "ticket.json")
                    elif "earlybert" in order:
                        if (earlybert_dir / "results.json").exists():  # it will never be drawn: do not wait forever
                            raise ValueError(f"random seed {seed}: {earlybert_dir / 'ticket.json'} is missing although "
                                             "the EarlyBERT run has finished; rerun that run with --overwrite")
                        continue  # EarlyBERT's search has not drawn it yet
                config = replace(base, method=method, seed=seed, output=str(run_dir), ticket_like=ticket_like)
                if results_file.exists():
                    logger.info("%s seed %d: finished earlier, kept", method, seed)
                    done[method] = json.loads(results_file.read_text())
                    continue
                result = finetune(config, resume=run_dir.exists(), stop_after=turns[method])
                if result is not None:
                    done[method] = result
                    _write_table(root, turn)
        runs.extend(done[method] for method in order)
    _write_table(root, turn)
    return runs


def _turns(base: FinetuneConfig, order: list[str], slice_steps: int | None) -> dict[str, int | None]:
    """Steps per turn of each method: `slice_steps` for the one that trains the most epochs (its search counted),
    the others in proportion; None for all when there is nothing to take turns with."""
    if not slice_steps or len(order) < 2:
        return {method: None for method in order}
    epochs = {m: replace(base, method=m).epochs_trained() for m in order}
    longest = max(epochs.values())
    return {m: max(1, math.ceil(slice_steps * epochs[m] / longest)) for m in order}


def _write_table(root: RunFolder, turn: int | None) -> None:
    """The table over every finished run in the folder, this call's and earlier calls' (other seeds) alike; `turn`:
    the longest method's steps per turn, None where the methods ran one after another."""
    runs = [json.loads(p.read_text()) for p in sorted(root.path.glob("*-seed*/results.json"))]
    if not runs or not root.is_main:
        return
    rows, table = comparison_table(runs)
    root.write_json("comparison.json", {"runs": runs, "rows": rows, "slice_steps": turn})
    plot_comparison(runs, root.path / FIGURE)
    how = f"taking turns of up to {turn} steps each" if turn else "one after another"
    note = (f"The methods of each seed ran on the same machine, {how}; time is the per-step protocol's total "
            "(forward, backward, optimizer; data loading excluded), EarlyBERT's including its search.")
    names = " and ".join(dict.fromkeys(data_name(r) for r in runs))
    figure = f"![score against training time, error bars over seeds]({FIGURE})"
    atomic_write_text(root.path / "report.md", f"# Comparison on {names}\n\n{table}\n{note}\n\n{figure}\n")
