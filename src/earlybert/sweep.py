"""The trade-off sweep (the paper's Table 5): one search, a ticket per grid point, a slim training per point and
the full baseline once; score against measured time saved.

A ticket for 3, 4, 5 or 6 pruned heads per layer and 30, 40 or 50% of the FFN neurons is a different cut of the
same gate coefficients, so a grid costs one search (per seed) and one slim training per point, not one search per
point. The search is fine-tuning's own (`finetune.search_only`: the same budget and early-bird rule, the rule
watching the ticket at `base.ticket`'s ratios, the paper's 1/3 of heads and 40% of FFN neurons unless set), and
every point is an earlybert run (`finetune` with `search_from`): its ticket is `draw_ticket` of the saved
coefficients at the point's ratios, its slim model restarts from the pretrained weights, and it is charged the
whole search's time, as a single EarlyBERT run is. So a point at the search's own ratios is exactly
`finetune --method earlybert`.

    SWEEP/config.json                  the sweep's settings (a resume must repeat them)
    SWEEP/search-seed<k>/              the search: coefficients.safetensors, search.json, mask_history.json
    SWEEP/full-seed<k>/                the full baseline
    SWEEP/heads<h>-ffn<f>-seed<k>/     one grid point's run
    SWEEP/report.md, tradeoff.png      the table and the figure, rewritten after every run
    SWEEP/results.json                 written last: its presence means the sweep is finished

Every run is a run folder of its own, so a killed sweep resumes point by point: finished runs are kept, the run
that was cut short continues from its checkpoint.
"""

from __future__ import annotations

import json
import logging
import statistics
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

from .archs import config_layer_shapes
from .finetune import FinetuneConfig, finetune, search_only
from .report import data_name, plot_sweep, sweep_table
from .runs import RunFolder, WallClock, atomic_write_text
from .ticket import TicketConfig

logger = logging.getLogger(__name__)

HEADS = (3, 4, 5, 6)  # the paper's Table 5 grid (QQP, BERT-base: 12 heads per layer)
FFN_RATIOS = (0.3, 0.4, 0.5)
FIGURE = "tradeoff.png"  # next to the sweep's report.md


class GridError(ValueError):
    """A grid value that cannot be swept; `axis` names the sweep() argument ("heads", "ffn_ratios", "seeds"), so
    the command line can name its own flag instead."""

    def __init__(self, axis: str, value, reason: str):
        self.axis, self.value, self.reason = axis, value, reason
        super().__init__(self.naming(axis))

    def naming(self, name: str) -> str:
        return f"{name}: {self.reason}" if self.value is None else f"{name} {self.value}: {self.reason}"


@dataclass(frozen=True)
class GridPoint:
    """Heads pruned per layer (a count, int, or a fraction of each layer's heads, float) and the FFN ratio."""

    heads: int | float
    ffn_ratio: float

    @property
    def name(self) -> str:
        return f"heads{self.heads:g}-ffn{self.ffn_ratio:g}"

    def ticket_config(self, like: TicketConfig) -> TicketConfig:
        """`like`'s FFN scope, rounding and minimums, at this point's ratios."""
        count = isinstance(self.heads, int)
        return replace(like, head_count=self.heads if count else None, head_ratio=None if count else self.heads,
                       ffn_ratio=self.ffn_ratio)


def parse_values(text: str, axis: str) -> list:
    """A comma-separated grid as typed: heads as counts (3) or fractions (0.25), FFN ratios, seeds."""
    tokens = [t.strip() for t in text.split(",") if t.strip()]
    if not tokens:
        raise GridError(axis, None, f"give at least one value, got {text!r}")
    values = []
    for token in tokens:
        try:
            # heads: a whole number is a count, anything else a fraction; FFN ratios are fractions
            values.append(int(token) if axis != "ffn_ratios" and token.lstrip("+-").isdigit() else float(token))
        except ValueError:
            raise GridError(axis, repr(token), "is not a number") from None
        if axis == "seeds" and not isinstance(values[-1], int):
            raise GridError(axis, token, "seeds are whole numbers")
    return values


def _check_values(axis: str, values: Sequence, kinds: tuple[type, ...] = (int, float)) -> None:
    """At least one value, each a number of the axis' kind, none given twice."""
    if not values:
        raise GridError(axis, None, "give at least one value")
    for i, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise GridError(axis, repr(value), "is not a number" if int in kinds else "is not a whole number")
        if value in values[:i]:  # 0 and 0.0 too: both prune no head, and would share a run folder
            raise GridError(axis, value, "is given twice")


def make_grid(heads: Sequence[int | float], ffn_ratios: Sequence[float]) -> list[GridPoint]:
    """Every (heads, FFN ratio) pair, FFN ratio outermost as in Table 5's rows; each value checked on its own."""
    _check_values("heads", heads)
    _check_values("ffn_ratios", ffn_ratios)
    for h in heads:
        if isinstance(h, int) and h < 0:
            raise GridError("heads", h, "a count of heads to prune must be >= 0")
        if isinstance(h, float) and not 0 <= h < 1:
            raise GridError("heads", h, "a fraction of each layer's heads must be in [0, 1); give counts as whole "
                                        "numbers")
    for f in ffn_ratios:
        if not 0 <= f < 1:
            raise GridError("ffn_ratios", f, "the fraction of FFN neurons pruned must be in [0, 1)")
    return [GridPoint(h, float(f)) for f in ffn_ratios for h in heads]


def check_grid_fits(grid: list[GridPoint], like: TicketConfig, model_config) -> None:
    """Every point's head count leaves each layer of this model at least `like.min_heads` heads."""
    num_heads, _ = config_layer_shapes(model_config)
    for point in grid:
        try:
            for n in num_heads:
                point.ticket_config(like).heads_to_prune(n)
        except ValueError as e:
            raise GridError("heads", point.heads, str(e)) from None


def _run_once(run: Callable[..., dict], config: FinetuneConfig) -> dict:
    """A finished run's results, kept; otherwise the run, continued from its checkpoint when it was started."""
    done = Path(config.output) / "results.json"
    if done.exists():
        return json.loads(done.read_text())
    return run(config, resume=Path(config.output).exists())


def sweep(base: FinetuneConfig, heads: Sequence[int | float] = HEADS, ffn_ratios: Sequence[float] = FFN_RATIOS,
          seeds: Sequence[int] | None = None, resume: bool = False, overwrite: bool = False,
          select: Callable | None = None) -> dict:
    """The trade-off sweep into `base.output` (see the module's docstring); returns results.json's content.

    `base` holds everything the runs share (data, model, epochs, learning rates, search settings; its `ticket`
    is what the search's early-bird rule watches, and its FFN scope, rounding and minimums apply to every point);
    `seeds` default to `base.seed`. Bad grid values raise GridError before anything is written. `select(base, grid,
    search results, search folder) -> (points kept, what to report)`, called once after the first seed's search,
    narrows the grid (target.reaching: the points predicted to save a target); its `settings` join config.json."""
    seeds = [base.seed] if seeds is None else list(seeds)
    _check_values("seeds", seeds, (int,))
    if base.search_from:
        raise ValueError("a sweep runs its own search; leave search_from unset")
    grid = make_grid(heads, ffn_ratios)
    from accelerate import PartialState

    from .tasks import load_model_config

    root = RunFolder(base.output, resume, overwrite, is_main=PartialState().is_main_process)
    settings = {**{k: v for k, v in base.to_dict().items() if k not in ("method", "seed")},
                "heads": list(heads), "ffn_ratios": list(ffn_ratios), "seeds": seeds,
                **(getattr(select, "settings", {}) if select else {})}
    finished = root.check_resume(settings) if resume else None
    if finished is not None:
        return finished
    check_grid_fits(grid, base.ticket, load_model_config(base.model))
    root.create().write_json("config.json", settings)
    clock = WallClock(root).begin()
    for seed in seeds:
        own = replace(base, method="earlybert", seed=seed)
        search = _run_once(search_only, replace(own, output=str(root.path / f"search-seed{seed}")))
        if select is not None and seed == seeds[0]:
            grid = _selected(root, select, own, grid, search, root.path / f"search-seed{seed}")
        _run_once(finetune, replace(own, method="full", output=str(root.path / f"full-seed{seed}")))
        _write_report(root, summarise(root.path, grid, seeds))
        for i, point in enumerate(grid, start=1):
            logger.info("sweep: point %d of %d, %s, seed %d", i, len(grid), point.name, seed)
            # search_from relative to the point's folder, so that a sweep moved as a whole still resumes
            _run_once(finetune, replace(own, output=str(root.path / f"{point.name}-seed{seed}"),
                                        ticket=point.ticket_config(base.ticket), search_from=f"../search-seed{seed}"))
            _write_report(root, summarise(root.path, grid, seeds))
    selection = root.read_json(SELECTION) if select else None
    results = {**summarise(root.path, grid, seeds), **({"selection": selection} if selection else {}),
               "wall_time_s": clock.stop()}
    _write_report(root, results)
    root.write_json("results.json", results)  # last: its presence marks the sweep finished (check_resume)
    return results


SELECTION = "selection.json"  # what `select` kept and why: kept, so that a resume sweeps the same points


def _selected(root: RunFolder, select: Callable, base: FinetuneConfig, grid: list[GridPoint], search: dict,
              folder: Path) -> list[GridPoint]:
    """The points `select` keeps, decided once (a timing may decide them) and read back on a resume."""
    chosen = root.read_json(SELECTION)
    if chosen is None:
        kept, why = select(base, grid, search, folder)
        chosen = {"kept": [{"heads": p.heads, "ffn_ratio": p.ffn_ratio} for p in kept], **why}
        root.write_json(SELECTION, chosen)
    return [GridPoint(p["heads"], p["ffn_ratio"]) for p in chosen["kept"]]


def _spread(values: list[float]) -> float | None:
    """The standard deviation over seeds; None with one seed, where there is none."""
    return statistics.stdev(values) if len(values) > 1 else None


def _finished(folder: Path, name: str, seeds) -> dict[int, dict]:
    """seed: results of the runs `name`-seed<k> in `folder` that have finished."""
    paths = {s: folder / f"{name}-seed{s}" / "results.json" for s in seeds}
    return {s: json.loads(path.read_text()) for s, path in paths.items() if path.exists()}


def _over_seeds(per_seed: list[dict], keys: Sequence[str]) -> dict:
    """key: the mean over seeds, key_std: the standard deviation (None with one seed or no value)."""
    out = {}
    for key in keys:
        values = [row[key] for row in per_seed if row[key] is not None]
        out[key], out[f"{key}_std"] = (statistics.mean(values) if values else None), _spread(values)
    return out


def _point_summary(point: GridPoint, runs: dict[int, dict], full: dict[int, dict]) -> dict:
    """One grid point over the seeds it has finished. Time saved, per seed: 1 - the point's step time (its search's
    and its slim training's) / the full baseline's of the same seed, both measured, as `compare` measures it."""
    per_seed = [{"seed": s, "score": r["score"], "step_time_s": r["total_step_time_s"],
                 "time_saved": 1 - r["total_step_time_s"] / full[s]["total_step_time_s"],
                 "time_saved_estimated": r["fraction_saved_vs_estimated_full"],  # a single run's own estimate
                 "theoretical_saved": r["theoretical_fraction_saved_flops"]} for s, r in runs.items()]
    entry = {"heads": point.heads, "ffn_ratio": point.ffn_ratio, "seeds": len(per_seed), "per_seed": per_seed}
    if not per_seed:
        return entry
    ticket = next(iter(runs.values()))["ticket"]  # every seed cuts the same numbers of heads and neurons
    return {**entry, "kept_heads": sum(ticket["kept_heads"]), "kept_ffn": sum(ticket["kept_ffn"]),
            **_over_seeds(per_seed, ("score", "time_saved", "time_saved_estimated", "theoretical_saved",
                                     "step_time_s"))}


def summarise(folder: Path, grid: list[GridPoint], seeds: list[int]) -> dict:
    """results.json's content from the runs in `folder` that have finished (a partial sweep gives a partial one)."""
    full, search = _finished(folder, "full", seeds), _finished(folder, "search", seeds)
    # a point's time saved needs its seed's full baseline, which runs before the seed's points
    points = [_point_summary(point, _finished(folder, point.name, full), full) for point in grid]
    baseline = None
    if full:
        per_seed = [{"seed": s, "score": r["score"], "step_time_s": r["total_step_time_s"]} for s, r in full.items()]
        baseline = {"seeds": len(full), "per_seed": per_seed, **_over_seeds(per_seed, ("score", "step_time_s"))}
    done = [p for p in points if p["seeds"]]
    # The full baseline takes part (no time saved, its score): a point it beats on both counts is off the frontier.
    candidates = [(p["time_saved"], p["score"]) for p in done] + ([(0.0, baseline["score"])] if baseline else [])
    for p, on_front in zip(done, pareto_front(candidates)):
        p["pareto"] = on_front
    some = next(iter(full.values()), None)
    return {"task": some and some["task"], "data": some and data_name(some),
            "headline_metric": some and some["headline_metric"], "seeds": seeds,
            "grid": {"heads": list(dict.fromkeys(p.heads for p in grid)),
                     "ffn_ratios": list(dict.fromkeys(p.ffn_ratio for p in grid))},
            "search": [{"seed": s, **{k: r["stage"][k] for k in ("steps", "budget", "stop_reason", "step_time_s")}}
                       for s, r in search.items()],
            "full": baseline, "points": points,
            "runs_finished": len(full) + sum(p["seeds"] for p in points), "runs_total": len(seeds) * (1 + len(grid))}


def pareto_front(pairs: list[tuple[float, float]]) -> list[bool]:
    """For each (time saved, score): True unless another pair is at least as good in both and better in one."""
    return [not any(t2 >= t and s2 >= s and (t2, s2) != (t, s) for t2, s2 in pairs) for t, s in pairs]


def _write_report(root: RunFolder, results: dict) -> None:
    """report.md (the Table-5-style table, how time was measured) and the figure, from the runs finished so far."""
    if not root.is_main or results["full"] is None:
        return
    plot_sweep(results, root.path / FIGURE)
    searches = ", ".join(f"seed {s['seed']}: {s['steps']} of {s['budget']} steps ({s['stop_reason']})"
                         for s in results["search"])
    progress = ("" if results["runs_finished"] == results["runs_total"] else
                f"**Partial**: {results['runs_finished']} of {results['runs_total']} runs finished.\n\n")
    note = ("Time saved: 1 - a point's step time / the full baseline's (same seed), both measured on this machine by "
            "the per-step protocol (forward, backward, optimizer; data loading excluded). The points share one search "
            f"per seed ({searches}), and each point is charged all of it, as a single EarlyBERT run is. "
            "`*`: on the Pareto frontier of score and time saved (the full baseline included).")
    selection = root.read_json(SELECTION)
    if selection is not None:
        note += (f"\n\nOnly the points predicted to save at least {selection['target']:.0%} of full fine-tuning's time "
                 f"(--target-saving): {len(selection['kept'])} of {len(selection['rows'])}; a slim step predicted as "
                 f"the full step x (a + (1 - a) x its linear-FLOP ratio), a = {selection['overhead_share']:.3f} "
                 "from the slim / full step-time ratio measured on the most pruned point.")
    figure = f"![score against measured time saved, full baseline as a line, Pareto frontier marked]({FIGURE})"
    atomic_write_text(root.path / "report.md", f"# Trade-off sweep on {results['data']}\n\n{progress}"
                                               f"{sweep_table(results)}\n{note}\n\n{figure}\n")
