"""What a person reads after a run: figures (the paper's Fig. 1, the ticket's shape, the loss) and report.md."""

from __future__ import annotations

import io
import os
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402

from .search import EarlyBird  # noqa: E402
from .ticket import Ticket, atomic_write_text  # noqa: E402


def _save(fig, path: Path) -> None:
    """PNG written to a temp name and renamed, like every other run file."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)


def plot_mask_distance(history: dict, path: Path) -> None:
    """Normalised Hamming distance between the masks drawn at every pair of recorded steps (Fig. 1)."""
    tracker = EarlyBird()
    tracker.load_state_dict(history)
    steps = tracker.steps
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, kind, title in zip(axes, ("heads", "ffn"), ("self-attention heads", "FFN neurons")):
        image = ax.imshow(tracker.distance_matrix(kind), cmap="viridis", vmin=0, vmax=1, origin="lower",
                          extent=(steps[0] - 0.5, steps[-1] + 0.5, steps[0] - 0.5, steps[-1] + 0.5))
        ax.set_title(f"mask distance: {title}")
        ax.set_xlabel("search step")
        ax.set_ylabel("search step")
    fig.colorbar(image, ax=axes, shrink=0.85, label="normalised Hamming distance")
    fig.suptitle(f"early-bird search: stopped at step {steps[-1]} ({history.get('stop_reason')})")
    _save(fig, path)


def plot_ticket(ticket: Ticket, path: Path) -> None:
    layers = range(ticket.num_layers)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, kept, full, title in (
        (axes[0], ticket.kept_heads, ticket.num_heads, "attention heads kept"),
        (axes[1], ticket.kept_ffn, ticket.ffn_sizes, "FFN neurons kept"),
    ):
        ax.bar(layers, full, color="#dddddd", label="full")
        ax.bar(layers, kept, color="#3b75af", label="kept")
        ax.set_title(title)
        ax.set_xlabel("layer")
        ax.set_xticks(list(layers))
        ax.legend(loc="lower right")
    _save(fig, path)


def plot_losses(losses: dict[str, list[float]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.6))
    offset = 0
    for stage, values in losses.items():
        ax.plot(range(offset + 1, offset + len(values) + 1), values, label=stage, linewidth=0.8)
        offset += len(values)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("task loss")
    ax.legend()
    _save(fig, path)


def _fmt(value, spec=".2f") -> str:
    return "-" if value is None else format(value, spec)


def write_run_report(folder: Path, config, results: dict, ticket: Ticket | None, history: dict | None,
                     losses: dict[str, list[float]]) -> None:
    figures = []
    if history and history.get("steps"):
        plot_mask_distance(history, folder / "mask_distance.png")
        figures.append(("Mask distance during the search (paper Fig. 1)", "mask_distance.png"))
    if ticket is not None:
        plot_ticket(ticket, folder / "ticket.png")
        figures.append(("Kept heads and FFN neurons per layer", "ticket.png"))
    if any(losses.values()):
        plot_losses(losses, folder / "loss.png")
        figures.append(("Training loss", "loss.png"))
    lines = [
        f"# {results['method']} on {results['task']} (seed {results['seed']})",
        "",
        f"Model: `{config.model}`  ",
        f"Score ({results['headline_metric']}): **{results['score']:.2f}**",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {k} | {v:.2f} |" for k, v in results["metrics"].items()],
        "",
        "## Time (per-step protocol: forward, backward, optimizer; data loading excluded)",
        "",
        "| stage | steps | step time (s) | mean step (s) | stop |",
        "|---|---|---|---|---|",
        *[f"| {name} | {s['steps']} | {s['step_time_s']:.1f} | {s['mean_step_s']:.3f} | {s['stop_reason']} |"
          for name, s in results["stages"].items()],
        "",
        f"Total step time: {results['total_step_time_s']:.1f} s; wall time {results['wall_time_s']:.1f} s.  ",
        f"Full fine-tuning ({results['full_run_steps']} steps), estimated from the search's median step time: "
        f"{_fmt(results['estimated_full_step_time_s'], '.1f')} s; fraction saved: "
        f"{_fmt(results['fraction_saved_vs_estimated_full'], '.1%')}; theoretical from linear-layer FLOPs: "
        f"{_fmt(results['theoretical_fraction_saved_flops'], '.1%')}.",
        "",
    ]
    if ticket is not None:
        lines += ["## Ticket", "", ticket.summary(), ""]
    for caption, name in figures:
        lines += [f"### {caption}", "", f"![{caption}]({name})", ""]
    atomic_write_text(folder / "report.md", "\n".join(lines))


def mean_spread(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def comparison_table(runs: list[dict]) -> tuple[list[dict], str]:
    """Rows per (task, method): mean +- std of the score over seeds, mean step time, time saved vs full."""
    rows = []
    for task in dict.fromkeys(r["task"] for r in runs):
        task_runs = [r for r in runs if r["task"] == task]
        full_times = [r["total_step_time_s"] for r in task_runs if r["method"] == "full"]
        full_time = statistics.mean(full_times) if full_times else None
        for method in dict.fromkeys(r["method"] for r in task_runs):
            chosen = [r for r in task_runs if r["method"] == method]
            score, spread = mean_spread([r["score"] for r in chosen])
            time_s = statistics.mean(r["total_step_time_s"] for r in chosen)
            theory = [r["theoretical_fraction_saved_flops"] for r in chosen if r["theoretical_fraction_saved_flops"] is not None]
            rows.append({
                "task": task, "method": method, "metric": chosen[0]["headline_metric"], "seeds": len(chosen),
                "score_mean": score, "score_std": spread, "step_time_s": time_s,
                "time_saved_vs_full": None if not full_time else 1 - time_s / full_time,
                "theoretical_saved": statistics.mean(theory) if theory else None,
            })
    lines = [
        "| task | method | metric | seeds | score (mean ± std) | step time (s) | time saved vs full | theoretical (FLOPs) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['method']} | {r['metric']} | {r['seeds']} | {r['score_mean']:.2f} ± {r['score_std']:.2f} "
            f"| {r['step_time_s']:.1f} | {_fmt(r['time_saved_vs_full'], '.1%')} | {_fmt(r['theoretical_saved'], '.1%')} |"
        )
    return rows, "\n".join(lines) + "\n"
