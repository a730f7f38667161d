"""What a person reads after a run: figures (the paper's Fig. 1, the ticket's shape, the loss) and report.md."""

from __future__ import annotations

import io
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402

from .search import EarlyBird  # noqa: E402
from .runs import atomic_write_bytes, atomic_write_text  # noqa: E402
from .ticket import Ticket  # noqa: E402


def _save(fig, path: Path) -> None:
    """PNG written atomically, like every other run file."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def plot_mask_distance(history: dict, path: Path) -> None:
    """Normalised Hamming distance between the masks drawn at every pair of recorded steps (Fig. 1)."""
    tracker = EarlyBird()
    tracker.load_state_dict(history)
    steps = tracker.steps
    # One cell per recorded mask, labelled with the optimizer step it was recorded at (an integer): the steps
    # need not be evenly spaced (the last record is wherever the search stopped), so no continuous axis fits.
    ticks = _tick_positions(len(steps))
    labels = [str(int(steps[i])) for i in ticks]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, kind, title in zip(axes, ("heads", "ffn"), ("self-attention heads", "FFN neurons")):
        image = ax.imshow(tracker.distance_matrix(kind), cmap="viridis", vmin=0, vmax=1, origin="lower")
        ax.set_xticks(ticks, labels)
        ax.set_yticks(ticks, labels)
        ax.set_title(f"mask distance: {title}")
        ax.set_xlabel("search step")
        ax.set_ylabel("search step")
    fig.colorbar(image, ax=axes, shrink=0.85, label="normalised Hamming distance")
    fig.suptitle(f"early-bird search: stopped at step {steps[-1]} ({history.get('stop_reason')})")
    _save(fig, path)


def _tick_positions(n: int, most: int = 8) -> list[int]:
    """Indices of at most `most` evenly spread records, always including the first and the last."""
    if n <= most:
        return list(range(n))
    return sorted({round(i * (n - 1) / (most - 1)) for i in range(most)})


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


def _estimate_source(results: dict) -> str:
    paired = results.get("paired_step_time_ratio")
    if results["method"] == "full":
        return "measured"
    if paired:
        return (f"estimated from this run's trained steps and the slim / full step-time ratio {paired['ratio']:.3f}, "
                f"measured on the same batches in alternating turns ({paired['pairs']} pairs)")
    return "not estimated"


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
        f"Total step time: {results['total_step_time_s']:.1f} s; wall time {results['wall_time_s']:.1f} s. The first "
        "3 steps of every stage are counted at the mean of the stage's other steps (process warm-up).  ",
        f"Full fine-tuning ({results['full_run_steps']} steps), {_estimate_source(results)}: "
        f"{_fmt(results['estimated_full_step_time_s'], '.1f')} s; fraction saved: "
        f"{_fmt(results['fraction_saved_vs_estimated_full'], '.1%')}; theoretical from linear-layer FLOPs: "
        f"{_fmt(results['theoretical_fraction_saved_flops'], '.1%')}.",
        "",
    ]
    lines += trained_vs_full_lines(results)
    if ticket is not None:
        lines += ["## Ticket", "", ticket.summary(), ""]
    for caption, name in figures:
        lines += [f"### {caption}", "", f"![{caption}]({name})", ""]
    atomic_write_text(folder / "report.md", "\n".join(lines))


def write_pretrain_report(folder, results: dict, ticket: Ticket | None) -> None:
    """report.md of a pre-training run: stages, held-out loss, FLOP saving, the search's mask distance (the
    paper's Fig. 1, top), the ticket's shape and the MLM loss per step."""
    stages, losses = results["stages"], results["losses"]
    lines = [f"# {results['method']} pre-training (seed {results['seed']})", "",
             "| stage | steps | step time (s) | mean step (s) |", "|---|---|---|---|",
             *[f"| {k} | {v['steps']} | {v['step_time_s']:.1f} | {v['mean_step_s']:.3f} |" for k, v in stages.items()],
             "", f"Total step time {results['total_step_time_s']:.1f} s.", "",
             *[f"Held-out MLM loss at {k}: {v['mlm_loss']:.4f} (perplexity {v['perplexity']:.1f})"
               for k, v in results["held_out"].items()], "", f"Theoretical fraction of the full run's linear-layer FLOPs "
             f"saved: {results['theoretical_fraction_saved_flops']:.1%}.", ""]
    figures = [("MLM loss per step", "loss.png")]
    plot_losses(losses, folder.path / "loss.png")
    if ticket is not None:
        plot_mask_distance(folder.read_json("mask_history.json"), folder.path / "mask_distance.png")
        plot_ticket(ticket, folder.path / "ticket.png")
        figures = [("Mask distance during the search (paper Fig. 1, top)", "mask_distance.png"),
                   ("Kept heads and FFN neurons per layer", "ticket.png"), *figures]
    lines += [line for caption, name in figures for line in (f"### {caption}", "", f"![{caption}]({name})", "")]
    atomic_write_text(folder.path / "report.md", "\n".join(lines))


def trained_vs_full_lines(results: dict) -> list[str]:
    """report.md's section on what the user got: size and inference speed of the trained model against the full."""
    got = results.get("trained_vs_full")
    if not got:
        return []
    params, disk, infer = got["parameters"], got["size_on_disk_bytes"], got["inference_s_per_batch"]
    return [
        "## What you got: the trained model against the full one",
        "",
        f"| | trained ({results['method']}) | full | trained / full |",
        "|---|---|---|---|",
        f"| parameters | {params['trained'] / 1e6:.2f} M | {params['full'] / 1e6:.2f} M | {params['ratio']:.2f} |",
        f"| size on disk (weights) | {disk['trained'] / 2**20:.1f} MiB | {disk['full'] / 2**20:.1f} MiB "
        f"| {disk['ratio']:.2f} |",
        f"| inference time per evaluation batch | {infer['trained'] * 1e3:.1f} ms | {infer['full'] * 1e3:.1f} ms "
        f"| {infer['ratio']:.2f} |",
        "",
        f"Inference: median over {infer['repetitions']} repetitions of the same {infer['batches']} evaluation "
        f"batches of {infer['batch_size']} on {infer['device']}, the two models in alternating order; the full "
        "model is the pretrained encoder with the same task head.",
        "",
    ]


def mean_spread(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


METHOD_ORDER = ("full", "earlybert", "random", "layerdrop")  # the baseline first, as in the paper's tables


def data_name(run: dict) -> str:
    """The data a run was trained on: the task, or the user's files by name (runs before this key: the task)."""
    return run.get("data") or run["task"]


def _method_key(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def comparison_table(runs: list[dict]) -> tuple[list[dict], str]:
    """Rows per (data, method), full first: mean +- std of the score over seeds, mean step time, time saved vs full."""
    rows = []
    for task in dict.fromkeys(data_name(r) for r in runs):
        task_runs = [r for r in runs if data_name(r) == task]
        full_times = [r["total_step_time_s"] for r in task_runs if r["method"] == "full"]
        full_time = statistics.mean(full_times) if full_times else None
        for method in sorted(dict.fromkeys(r["method"] for r in task_runs), key=_method_key):
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


def plot_comparison(runs: list[dict], path: Path) -> None:
    """Score against measured training time (per-step protocol, EarlyBERT's including its search), one point per
    method at its mean over seeds, error bars one standard deviation over seeds on both axes."""
    names = list(dict.fromkeys(data_name(r) for r in runs))
    fig, axes = plt.subplots(1, len(names), figsize=(6.4 * len(names), 4.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        chosen = [r for r in runs if data_name(r) == name]
        for method in sorted(dict.fromkeys(r["method"] for r in chosen), key=_method_key):
            own = [r for r in chosen if r["method"] == method]
            time_s, time_sd = mean_spread([r["total_step_time_s"] for r in own])
            score, score_sd = mean_spread([r["score"] for r in own])
            ax.errorbar(time_s, score, xerr=time_sd, yerr=score_sd, fmt="o", capsize=4,
                        label=f"{method} ({len(own)} seed{'s' if len(own) > 1 else ''})")
        ax.set_xlabel("training time (s, per-step protocol)")
        ax.set_ylabel(f"{chosen[0]['headline_metric']}")
        ax.set_title(f"{name}: score against training time")
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, path)


def _heads_label(heads: int | float) -> str:
    """A sweep's head setting: a count of heads pruned per layer, or a fraction of each layer's heads."""
    return f"{heads} head{'' if heads == 1 else 's'}" if isinstance(heads, int) else f"{heads:.0%} of heads"


def _with_spread(mean: float | None, std: float | None, spec: str) -> str:
    return _fmt(mean, spec) + ("" if mean is None or std is None else f" ± {format(std, spec)}")


def sweep_table(results: dict) -> str:
    """The paper's Table 5 layout: heads pruned per layer across, FFN ratio down, time saved and score per cell
    (mean ± std over seeds when there are several); `*` marks the Pareto frontier."""
    heads, ffn_ratios = results["grid"]["heads"], results["grid"]["ffn_ratios"]
    cells = {(p["heads"], p["ffn_ratio"]): p for p in results["points"] if p["seeds"]}
    metric = results["headline_metric"]
    lines = [f"| FFN pruned | | {' | '.join(f'{_heads_label(h)} pruned' for h in heads)} |",
             "|---|---|" + "---|" * len(heads)]
    for ratio in ffn_ratios:
        row = [cells.get((h, ratio)) for h in heads]
        lines.append(f"| {ratio:.0%} | time saved | " + " | ".join(
            "-" if p is None else _with_spread(p["time_saved"], p["time_saved_std"], ".1%") for p in row) + " |")
        lines.append(f"| | {metric} | " + " | ".join(
            "-" if p is None else _with_spread(p["score"], p["score_std"], ".2f") + ("*" if p.get("pareto") else "")
            for p in row) + " |")
    full = results["full"]
    seeds = f"{full['seeds']} seed{'s' if full['seeds'] > 1 else ''}"
    lines += ["", f"Full fine-tuning ({seeds}): {metric} {_with_spread(full['score'], full['score_std'], '.2f')}, "
                  f"step time {full['step_time_s']:.1f} s."]
    return "\n".join(lines) + "\n"


def plot_sweep(results: dict, path: Path) -> None:
    """Score against measured time saved, one point per grid point (error bars: one standard deviation over seeds
    on both axes), the full baseline as a horizontal line (its band: one standard deviation), and the Pareto
    frontier drawn through the points on it."""
    done = [p for p in results["points"] if p["seeds"]]
    full = results["full"]
    fig, ax = plt.subplots(figsize=(7.2, 4.6))
    ax.axhline(full["score"], color="#555555", linestyle="--", linewidth=1,
               label=f"full fine-tuning ({full['score']:.2f})")
    if full["score_std"]:
        ax.axhspan(full["score"] - full["score_std"], full["score"] + full["score_std"], color="#555555", alpha=0.12)
    for on_front, colour, label in ((False, "#3b75af", "grid point"), (True, "#d62728", "on the Pareto frontier")):
        chosen = [p for p in done if bool(p.get("pareto")) == on_front]
        for i, p in enumerate(chosen):
            ax.errorbar(100 * p["time_saved"], p["score"], xerr=100 * (p["time_saved_std"] or 0),
                        yerr=p["score_std"] or 0, fmt="o", color=colour, capsize=3, label=None if i else label)
    # Points close together (equal savings within a point, near-equal scores) would print their labels over each
    # other: a label goes under its point when one above the same spot is taken.
    xs, ys = [100 * p["time_saved"] for p in done], [p["score"] for p in done]
    y_span = (max(ys) - min(ys) if ys else 0.0) or 1.0  # no point finished yet, or all at one score
    above: list[tuple[float, float]] = []
    for p, x, y in sorted(zip(done, xs, ys), key=lambda t: (t[1], t[2])):
        heads = f"{p['heads']}h" if isinstance(p["heads"], int) else f"{p['heads']:.0%}h"
        crowded = any(abs(x - x2) < 1.5 and abs(y - y2) < 0.06 * y_span for x2, y2 in above)
        if not crowded:
            above.append((x, y))
        ax.annotate(f"{heads} / {p['ffn_ratio']:.0%}", (x, y), fontsize=7, textcoords="offset points",
                    xytext=(4, -11) if crowded else (4, 4))
    front = sorted((100 * p["time_saved"], p["score"]) for p in done if p.get("pareto"))
    if len(front) > 1:
        ax.plot(*zip(*front), color="#d62728", linewidth=1, alpha=0.7)
    ax.set_xlabel("time saved vs full fine-tuning (%, measured; the search charged to every point)")
    ax.set_ylabel(results["headline_metric"])
    ax.set_title(f"{results['data']}: score against time saved (heads pruned per layer / FFN pruned)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def target_report(results: dict, candidates: list[dict]) -> str:
    """report.md of `finetune --target-saving`: what was picked, why, the predicted and the measured saving."""
    picked, cal = results["picked"], results["calibrated_on"]
    lines = [f"# Fine-tuning to a target saving on {results['task']}", "",
             f"Target: save {results['target']:.1%} of full fine-tuning's time. Picked: {_heads_label(picked['heads'])}"
             f" pruned per layer, {picked['ffn_ratio']:.0%} of FFN neurons pruned (slim linear FLOPs "
             f"{results['flop_ratio']:.1%} of "
             "the full model's): the candidate predicted to reach the target with the least pruning.", "",
             "| target | predicted (time) | predicted (FLOPs) | measured |", "|---|---|---|---|",
             f"| {results['target']:.1%} | {results['predicted_saving']:.1%} | "
             f"{results['predicted_saving_flops']:.1%} | "
             f"{_fmt(results['measured_saving'] and 100 * results['measured_saving'], '.1f')}% |", "",
             f"{results['headline_metric']}: {results['score']:.2f}.", "",
             "Predicted saving: 1 - (search cost + slim steps x slim step) / (full steps x full step); "
             f"{results['search']['steps']} search steps, {results['slim_steps']} slim steps, "
             f"{results['full_steps']} full steps. In time, a slim step is the full step x (a + (1 - a) x FLOP "
             f"ratio), a = {results['overhead_share']:.3f} fitted from the paired slim / full step-time ratio "
             f"{cal['ratio']:.3f} measured on the most pruned candidate ({_heads_label(cal['heads'])}, "
             f"{cal['ffn_ratio']:.0%} FFN). Measured: the run's own step time (search included) against the full "
             "baseline's estimated from its paired step-time ratio.", "",
             "| heads pruned | FFN pruned | FLOP ratio | predicted (time) | predicted (FLOPs) |",
             "|---|---|---|---|---|"]
    for row in candidates:
        mark = " **picked**" if (row["heads"], row["ffn_ratio"]) == (picked["heads"], picked["ffn_ratio"]) else ""
        lines.append(f"| {row['heads']} | {row['ffn_ratio']:.0%} | {row['flop_ratio']:.3f} | "
                     f"{row['predicted_saving']:.1%}{mark} | {row['predicted_saving_flops']:.1%} |")
    return "\n".join(lines) + "\n"


def search_by_layer_lines(ticket: Ticket, history: dict | None, objective: str) -> list[str]:
    """report.md's section on where the search pruned: per layer, the share of heads and FFN neurons it removed,
    and how far apart the last two recorded masks were. The paper (App. B) saw the masked-LM objective prune the
    earlier layers more and the task loss the later ones; this table is what shows it for a run."""
    loss = "masked-LM loss on the task's training text (paper App. B)" if objective == "mlm" else "task loss"
    lines = ["## Where the search pruned", "", f"Search objective: {loss}.  "]
    if history and len(history.get("steps", [])) >= 2:
        tracker = EarlyBird()
        tracker.load_state_dict(history)
        heads, ffn = (tracker.distance_matrix(kind)[-1, -2] for kind in ("heads", "ffn"))
        lines.append(f"Mask distance between the last two records (steps {tracker.steps[-2]} and {tracker.steps[-1]}): "
                     f"heads {heads:.3f}, FFN {ffn:.3f}; every pair is in the mask-distance figure.")
    lines += ["", "| layer | heads pruned | FFN neurons pruned |", "|---|---|---|"]
    for layer, (kept_h, all_h, kept_f, all_f) in enumerate(zip(ticket.kept_heads, ticket.num_heads, ticket.kept_ffn,
                                                               ticket.ffn_sizes)):
        lines.append(f"| {layer} | {all_h - kept_h}/{all_h} ({1 - kept_h / all_h:.0%}) | "
                     f"{all_f - kept_f}/{all_f} ({1 - kept_f / all_f:.0%}) |")
    return [*lines, ""]


def append_report_lines(folder: Path, lines: list[str]) -> None:
    """Add a section at the end of a run's report.md (rewritten whole, atomically, like every run file)."""
    path = folder / "report.md"
    atomic_write_text(path, path.read_text().rstrip("\n") + "\n\n" + "\n".join(lines))


def stop_table(results: dict) -> str:
    """report.md of the stop-time ablation (paper Fig. 3): score and time saved against when the search stopped."""
    lines = [f"# When to stop the search: {results['task']}, seed {results['seed']}", "",
             f"| search stopped at | search steps | {results['headline_metric']} | search step time | time saved "
             "(estimated) | linear FLOPs saved |", "|---|---|---|---|---|---|"]
    for p in results["points"]:
        saved = p["time_saved_estimated"]
        lines.append(f"| {p['stop_at']:.0%} of epoch 1 | {p['steps']} | {p['score']:.2f} | "
                     f"{p['search_step_time_s']:.2f} s | {_fmt(saved and 100 * saved, '.1f')}% | "
                     f"{100 * p['theoretical_saved']:.1f}% |")
    note = ("One search, run to the latest stop time with the early-bird rule off; each row's ticket is drawn from "
            "the gate coefficients of its step (at the run's ticket ratios), its slim model trained as an earlybert "
            "run and charged the search's time up to that step. Time saved: against the full baseline estimated from "
            "each run's paired slim / full step-time ratio.")
    return "\n".join(lines) + "\n\n" + note + "\n"


def epochs_table(results: dict) -> str:
    """report.md of the slim epochs x learning-rate scale ablation (paper Fig. 2): score per cell, time saved."""
    epochs = list(dict.fromkeys(p["slim_epochs"] for p in results["points"]))
    scales = list(dict.fromkeys(p["lr_scale"] for p in results["points"]))
    cell = {(p["slim_epochs"], p["lr_scale"]): p for p in results["points"]}
    lines = [f"# Slim epochs x learning-rate scale: {results['task']}, seed {results['seed']}", "",
             f"{results['headline_metric']} (estimated time saved) per slim-training epochs (rows) and learning-rate "
             f"scale (columns); the full baseline trains {results['full_epochs']:g} epochs.", "",
             "| epochs | " + " | ".join(f"lr x{s:g}" for s in scales) + " |", "|---" * (len(scales) + 1) + "|"]
    for e in epochs:
        row = [cell[(e, s)] for s in scales]
        lines.append(f"| {e:g} | " + " | ".join(
            f"{p['score']:.2f} ({_fmt(p['time_saved_estimated'] and 100 * p['time_saved_estimated'], '.1f')}%)"
            for p in row) + " |")
    note = ("One search, its ticket at the run's ratios; every cell a slim training from it, charged the whole search. "
            "Time saved: against the full baseline estimated from each run's paired slim / full step-time ratio.")
    return "\n".join(lines) + "\n\n" + note + "\n"


def ablation_table(results: dict, keys: list[str]) -> str:
    """report.md of a lambda or FFN-scope ablation (paper Table 3): one row per run."""
    lines = [f"# Ablation ({results['ablation']}): {results['task']}, seed {results['seed']}", "",
             "| " + " | ".join(keys) + f" | {results['headline_metric']} | search steps (stop) | kept heads | kept FFN "
             "| time saved (estimated) |", "|---" * (len(keys) + 5) + "|"]
    for p in results["points"]:
        saved = p["time_saved_estimated"]
        lines.append("| " + " | ".join(f"{p[k]:g}" if isinstance(p[k], float) else str(p[k]) for k in keys) +
                     f" | {p['score']:.2f} | {p['search_steps']} ({p['stop_reason']}) | "
                     f"{sum(p['ticket']['kept_heads'])}"
                     f" | {sum(p['ticket']['kept_ffn'])} | {_fmt(saved and 100 * saved, '.1f')}% |")
    note = ("Time saved: against the full baseline estimated from each run's paired slim / full step-time ratio, "
            "the search included.")
    return "\n".join(lines) + "\n\n" + note + "\n"


def plot_ablation(results: dict, x: str, path: Path, series: str | None = None, log_x: bool = False) -> None:
    """Score against the ablated setting `x`, one line per value of `series` (the epochs ablation: per lr scale)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    groups = list(dict.fromkeys(p[series] for p in results["points"])) if series else [None]
    for group in groups:
        points = [p for p in results["points"] if series is None or p[series] == group]
        xs = [p[x] if isinstance(p[x], (int, float)) else str(p[x]) for p in points]
        ax.plot(xs, [p["score"] for p in points], marker="o", label=None if series is None else f"{series} {group:g}")
    if log_x and all(isinstance(p[x], (int, float)) and p[x] > 0 for p in results["points"]):
        ax.set_xscale("log")
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel(results["headline_metric"])
    ax.set_title(f"{results['task']}: ablation ({results['ablation']}), seed {results['seed']}")
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    _save(fig, path)
