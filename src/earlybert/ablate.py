"""The paper's ablations, one function each (`earlybert ablate stop|epochs|lambda|scope`), each writing results.json
and a report.md table: when to stop the search (Fig. 3), slim epochs x learning-rate scale (Fig. 2), the L1
coefficient and FFN pruning across or within layers (Table 3). All but lambda share one search.

`ablate_stop(base, stop_at)`: ONE search runs to the largest stop time (a fraction of the first epoch) with the
early-bird rule off, pausing at each smaller stop time to keep the gates' coefficients of that step; each stop time
is then an earlybert run (`finetune` with `search_from`) whose ticket is `draw_ticket` of the coefficients of its
step, at `base.ticket`'s ratios, and which is charged the search's time up to that step only, as a search stopped
there would have been.

    ABL/config.json            the settings (a resume must repeat them)
    ABL/search/                the one search: coefficients-step<N>.safetensors at every stop step
    ABL/search-stop<f>/        the search as stopped at f: its coefficients, search.json and masks up to that step
    ABL/stop<f>/               the slim training from that ticket
    ABL/report.md, ablation.png, results.json   the table (stop time, steps, score, time saved), the figure
                               (score against stop time); results.json written last

`ablate_epochs(base, slim_epochs, lr_scales)` (the paper's Fig. 2): one search (`finetune.search_only`), its ticket
at `base.ticket`'s ratios, and a slim training per (slim epochs, learning-rate scale): can fewer epochs at a larger
learning rate recover the score? Every point is charged the whole search.

    ABL/search/                the search
    ABL/epochs<e>-lr<s>/       one point's earlybert run (search_from ../search)

`ablate_lambda(base, lambdas)`: a whole earlybert run per L1 coefficient (ABL/lambda<v>/); `ablate_scope(base)`: one
search, its coefficients cut with FFN neurons pruned globally and within each layer (ABL/scope<global|layer>/).
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from .finetune import COEFFICIENTS, FinetuneConfig, finetune, save_coefficients, search_only
from .runs import RunFolder, WallClock, atomic_write_text
from .sweep import GridError, _check_values, _run_once
from .train import Paused, StageResult, StepBudget

FIGURE = "ablation.png"  # next to an ablation's report.md
STOP_AT = (0.01, 0.05, 0.1, 0.2, 0.4, 1.0)  # Fig. 3: search stop times as fractions of the first epoch
SLIM_EPOCHS, LR_SCALES = (1.0, 2.0, 3.0), (1.0, 2.0, 3.0, 4.0)  # Fig. 2: the paper picks 2 epochs at 2x (4e-5)


def snapshot_name(step: int) -> str:
    return f"coefficients-step{step}.safetensors"


def stop_steps(stop_at: Sequence[float], per_epoch: int) -> list[int]:
    """The search step of each stop time (at least 1); two stop times on one step would be one ticket twice."""
    _check_values("stop_at", stop_at, (float, int))
    steps = []
    for f in stop_at:
        if not 0 < f <= 1:
            raise GridError("stop_at", f, "a stop time is a fraction of the first epoch, in (0, 1]")
        steps.append(max(1, math.ceil(f * per_epoch)))
        if steps[-1] in steps[:-1]:
            raise GridError("stop_at", f, f"falls on search step {steps[-1]} as an earlier stop time does "
                                          f"({per_epoch} steps per epoch)")
    return steps


def _checkpoint_step(folder: Path) -> int:
    progress = folder / "search_checkpoint" / "progress.json"
    return json.loads(progress.read_text())["result"]["steps"] if progress.exists() else 0


def search_with_snapshots(config: FinetuneConfig, steps: list[int]) -> dict:
    """One search to max(steps), the coefficients kept at every step of `steps` (snapshot_name); search_only's
    results. Each slice pauses at the next stop step (train.StepBudget) and resumes from the pause's checkpoint."""
    folder, last = Path(config.output), max(steps)
    for step in sorted(steps)[:-1]:
        if (folder / snapshot_name(step)).exists():
            continue
        at = _checkpoint_step(folder)
        if at >= step:  # a kill between a pause and its snapshot: the gates of that step are gone
            raise ValueError(f"{folder}: the search is past step {step} without its coefficients; rerun with "
                             "--overwrite")
        gates = []
        try:
            search_only(config, resume=folder.exists(), budget=StepBudget(step - at), on_pause=gates.append)
        except Paused:
            head, ffn = gates[0].scores()
            save_coefficients(folder / snapshot_name(step), head, ffn, step)
        else:
            raise RuntimeError(f"the search stopped before step {step}")  # the early-bird rule is off: cannot happen
    results = _run_once(search_only, config)
    if results["stage"]["steps"] != last:
        raise RuntimeError(f"the search stopped at step {results['stage']['steps']}, not {last}")
    shutil.copyfile(folder / COEFFICIENTS, folder / snapshot_name(last))
    return results


def stopped_search(search: Path, out: Path, step: int, reason: str) -> None:
    """`out`: the search as if it had stopped at `step`: that step's coefficients, its step times and losses, and
    the masks recorded up to it; an earlybert run with search_from=`out` is charged exactly that much search."""
    out.mkdir(parents=True, exist_ok=True)
    done = json.loads((search / "search.json").read_text())
    stage = StageResult("search", steps=step, step_times=done["step_times"][:step], stop_reason=reason)
    # wall time is not split per step: the share of the whole search's wall time that its first `step` steps took
    wall = done["stage"]["wall_s"] * sum(stage.step_times) / max(sum(done["step_times"]), 1e-12)
    stage.wall_s = wall
    done = {**done, "stage": {**stage.summary(), "budget": step}, "losses": done["losses"][:step],
            "step_times": done["step_times"][:step]}
    history = json.loads((search / "mask_history.json").read_text())
    keep = [i for i, s in enumerate(history["steps"]) if s <= step]
    history = {**history, "steps": [history["steps"][i] for i in keep], "stop_reason": reason, "newest": None,
               "head_masks": [history["head_masks"][i] for i in keep],
               "ffn_masks": [history["ffn_masks"][i] for i in keep]}
    for name, data in (("search.json", done), ("mask_history.json", history)):
        atomic_write_text(out / name, json.dumps(data))
    shutil.copyfile(search / "config.json", out / "config.json")  # the search's settings (its objective)
    shutil.copyfile(search / snapshot_name(step), out / COEFFICIENTS)  # last: its presence marks `out` complete


def _open(base: FinetuneConfig, axes: dict, resume: bool, overwrite: bool) -> RunFolder | dict:
    """The ablation's folder, created with config.json (the run settings and the ablation's axes); or, for a resume
    of a finished ablation, its results."""
    from accelerate import PartialState

    root = RunFolder(base.output, resume, overwrite, is_main=PartialState().is_main_process)
    settings = {**base.to_dict(), **axes}
    finished = root.check_resume(settings) if resume else None
    if finished is not None:
        return finished
    root.create().write_json("config.json", settings)
    return root


def _point(run: dict) -> dict:
    """What a table row shows of one slim run."""
    return {"score": run["score"], "search_step_time_s": run["stages"]["search"]["step_time_s"],
            "total_step_time_s": run["total_step_time_s"],
            "time_saved_estimated": run["fraction_saved_vs_estimated_full"],
            "theoretical_saved": run["theoretical_fraction_saved_flops"], "ticket": run["ticket"]}


def ablate_stop(base: FinetuneConfig, stop_at: Sequence[float] = STOP_AT, resume: bool = False,
                overwrite: bool = False) -> dict:
    """The stop-time ablation into `base.output` (see the module's docstring); returns results.json's content.
    Bad stop times raise GridError (axis "stop_at") before anything is written."""
    from .report import plot_ablation, stop_table
    from .tasks import prepare_task
    from .train import steps_per_epoch

    if base.method != "earlybert" or base.search_from or base.searches_with_mlm:
        raise ValueError("the stop-time ablation runs its own task-loss search: method earlybert, no search_from, "
                         "search objective task")
    stop_at = list(stop_at)
    steps = stop_steps(stop_at, steps_per_epoch(len(prepare_task(base).train_features), base.train_config(False)))
    root = _open(base, {"stop_at": stop_at}, resume, overwrite)
    if isinstance(root, dict):
        return root
    clock = WallClock(root).begin()
    # The early-bird rule off (no mask is within distance 0 of another), the budget the latest stop time: the
    # search runs to it, whatever its masks do, as the paper's Fig. 3 searches do.
    search_with_snapshots(replace(base, output=str(root.path / "search"), epsilon=0.0, search_max_steps=max(steps),
                                  search_epoch_fraction=max(stop_at)), steps)
    points = []
    for fraction, step in zip(stop_at, steps):
        name = f"stop{fraction:g}"
        if not (root.path / f"search-{name}" / COEFFICIENTS).exists():
            stopped_search(root.path / "search", root.path / f"search-{name}", step, f"stopped at {fraction:g} epoch")
        run = _run_once(finetune, replace(base, output=str(root.path / name), search_from=f"../search-{name}"))
        points.append({"stop_at": fraction, "steps": step, **_point(run)})
    results = {"ablation": "stop", "task": run["task"], "headline_metric": run["headline_metric"],
               "seed": base.seed,
               "points": points, "wall_time_s": clock.stop()}
    if root.is_main:
        atomic_write_text(root.path / "report.md", stop_table(results) + f"\n![score against stop time]({FIGURE})\n")
        plot_ablation(results, "stop_at", root.path / FIGURE, log_x=True)
    root.write_json("results.json", results)  # last: its presence marks the ablation finished
    return results


def ablate_epochs(base: FinetuneConfig, slim_epochs: Sequence[float] = SLIM_EPOCHS,
                  lr_scales: Sequence[float] = LR_SCALES, resume: bool = False, overwrite: bool = False) -> dict:
    """The slim epochs x learning-rate scale ablation into `base.output` (see the module's docstring); returns
    results.json's content. Bad values raise GridError (axes "slim_epochs", "lr_scales") before anything is written."""
    from .report import epochs_table, plot_ablation

    if base.method != "earlybert" or base.search_from:
        raise ValueError("the epochs ablation runs its own search: method earlybert, no search_from")
    for axis, values in (("slim_epochs", slim_epochs), ("lr_scales", lr_scales)):
        _check_values(axis, values)
        for value in values:
            if value <= 0:
                raise GridError(axis, value, "must be > 0")
    root = _open(base, {"slim_epochs": list(slim_epochs), "lr_scales": list(lr_scales)}, resume, overwrite)
    if isinstance(root, dict):
        return root
    clock = WallClock(root).begin()
    _run_once(search_only, replace(base, output=str(root.path / "search")))
    points = []
    for epochs in slim_epochs:
        for scale in lr_scales:
            run = _run_once(finetune, replace(base, output=str(root.path / f"epochs{epochs:g}-lr{scale:g}"),
                                              earlybert_epochs=epochs, lr_scale=scale, search_from="../search"))
            points.append({"slim_epochs": epochs, "lr_scale": scale, "lr": base.lr * scale, **_point(run)})
    results = {"ablation": "epochs", "task": run["task"], "headline_metric": run["headline_metric"],
               "seed": base.seed, "full_epochs": base.epochs, "points": points, "wall_time_s": clock.stop()}
    if root.is_main:
        atomic_write_text(root.path / "report.md", epochs_table(results) + f"\n![score per cell]({FIGURE})\n")
        plot_ablation(results, "slim_epochs", root.path / FIGURE, series="lr_scale")
    root.write_json("results.json", results)  # last: its presence marks the ablation finished
    return results


LAMBDAS = (1e-5, 1e-4, 1e-3)  # Table 3: the L1 coefficient of the gates' penalty (paper: 1e-4), heads and FFN alike
SCOPES = ("global", "layer")  # Table 3: FFN neurons pruned across all layers (the paper's) or within each layer


def _ablate_runs(base: FinetuneConfig, ablation: str, axes: dict, points: list[tuple[dict, FinetuneConfig]],
                 resume: bool, overwrite: bool, shared_search: bool) -> dict:
    """One earlybert run per (label, config) into `base.output`/<name>, after one shared search when
    `shared_search` (each run then draws from its coefficients); results.json and report.md (report.ablation_table)."""
    from .report import ablation_table, plot_ablation

    if base.method != "earlybert" or base.search_from:
        raise ValueError(f"the {ablation} ablation runs its own search: method earlybert, no search_from")
    root = _open(base, axes, resume, overwrite)
    if isinstance(root, dict):
        return root
    clock = WallClock(root).begin()
    if shared_search:
        _run_once(search_only, replace(base, output=str(root.path / "search")))
    rows = []
    for label, config in points:
        name = "-".join(f"{k}{v:g}" if isinstance(v, float) else f"{k}{v}" for k, v in label.items())
        config = replace(config, output=str(root.path / name), search_from="../search" if shared_search else None)
        run = _run_once(finetune, config)
        rows.append({**label, "search_steps": run["stages"]["search"]["steps"],
                     "stop_reason": run["stages"]["search"]["stop_reason"], **_point(run)})
    results = {"ablation": ablation, "task": run["task"], "headline_metric": run["headline_metric"],
               "seed": base.seed, "points": rows, "wall_time_s": clock.stop()}
    if root.is_main:
        key = next(iter(points[0][0]))
        atomic_write_text(root.path / "report.md", ablation_table(results, [key]) + f"\n![score per {key}]({FIGURE})\n")
        plot_ablation(results, key, root.path / FIGURE, log_x=key == "lambda")
    root.write_json("results.json", results)  # last: its presence marks the ablation finished
    return results


def ablate_lambda(base: FinetuneConfig, lambdas: Sequence[float] = LAMBDAS, resume: bool = False,
                  overwrite: bool = False) -> dict:
    """The L1 coefficient ablation (Table 3): a whole earlybert run (its own search) per lambda, heads and FFN
    alike. The penalty shapes the search itself, so no search is shared."""
    _check_values("lambdas", lambdas)
    for value in lambdas:
        if value < 0:
            raise GridError("lambdas", value, "must be >= 0")
    points = [({"lambda": float(v)}, replace(base, gates=replace(base.gates, head_l1=float(v), ffn_l1=float(v))))
              for v in lambdas]
    return _ablate_runs(base, "lambda", {"lambdas": list(lambdas)}, points, resume, overwrite, shared_search=False)


def ablate_scope(base: FinetuneConfig, resume: bool = False, overwrite: bool = False) -> dict:
    """FFN pruning across all layers against within each layer (Table 3), at `base.ticket`'s ratios: two cuts of
    one search's coefficients, a slim training each."""
    points = [({"scope": scope}, replace(base, ticket=replace(base.ticket, ffn_scope=scope))) for scope in SCOPES]
    return _ablate_runs(base, "scope", {"scopes": list(SCOPES)}, points, resume, overwrite, shared_search=True)
