"""Fine-tuning to a stated time saving (`finetune --target-saving F`): the tool picks the ticket's ratios.

The user says which fraction of full fine-tuning's time to save; one search runs (`finetune.search_only`), and
every candidate of a small grid (heads pruned per layer 0 .. half the heads, FFN ratio 0 .. 0.6 in steps of 0.05)
is a cut of its coefficients. For each candidate the expected saving is

    1 - (search cost + slim steps x slim step) / (full steps x full step)

In FLOPs (the linear-layer model of `flops.count_flops`): the search costs its steps at the full model's FLOPs and a
slim step costs the slim model's linear FLOPs. In time on this machine: the search costs its measured step time, and
a slim step is predicted as full step x (a + (1 - a) x FLOP ratio), where `a` (the share of a step that pruning does
not shrink: embeddings, the task head, optimizer and framework overhead) is fitted from one paired slim / full
step-time measurement (`train.step_time_ratio`) on the most pruned candidate, where the slope is best measured. The
pick is the candidate whose time prediction reaches the target with the least pruning (the most FLOPs kept); the
run is then an earlybert run with `search_from` on that pick, and its report gives the predicted and measured saving.

    OUT/config.json      the settings (a resume must repeat them)
    OUT/search/          the search (coefficients.safetensors)
    OUT/target.json      the candidates, the calibration and the pick (kept, so a resume picks the same)
    OUT/run/             the earlybert run at the picked ratios
    OUT/report.md, results.json   written last
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import Callable

from .finetune import finetune, search_only
from .sweep import GridPoint, _run_once

logger = logging.getLogger(__name__)

FFN_STEP, FFN_MAX = 0.05, 0.6  # the candidate grid's FFN ratios: 0, 0.05, .., 0.6
HEAD_SHARE_MAX = 0.5  # heads pruned per layer: 0 .. half of the fewest heads any layer has
FLAG = "--target-saving"  # named in errors, so that an API error reads as the command line's


class TargetError(ValueError):
    """A target that cannot be met (or is not a fraction); the message names --target-saving."""


def candidates(num_heads: list[int]) -> list[GridPoint]:
    """The candidate grid, as GridPoints with head counts."""
    most_heads = int(min(num_heads) * HEAD_SHARE_MAX)
    ffn = [round(i * FFN_STEP, 2) for i in range(int(round(FFN_MAX / FFN_STEP)) + 1)]
    return [GridPoint(h, f) for f in ffn for h in range(most_heads + 1)]


def expected_saving(search_cost: float, full_step: float, full_steps: int, slim_steps: int, slim_ratio: float) -> float:
    """1 - (search cost + slim steps x slim step) / (full steps x full step), slim step = slim_ratio x full step;
    in FLOPs (search cost = search steps, full step = 1) or in seconds."""
    return 1 - (search_cost + slim_steps * slim_ratio * full_step) / (full_steps * full_step)


def overhead_share(flop_ratio: float, time_ratio: float) -> float:
    """`a` in time ratio = a + (1 - a) x FLOP ratio, from one measured pair; clipped to [0, 1): a slim step that
    measured faster than its FLOPs predict means no overhead, not a negative one."""
    if flop_ratio >= 1:  # nothing pruned: the pair says nothing about the slope; assume time follows FLOPs
        return 0.0
    return min(max((time_ratio - flop_ratio) / (1 - flop_ratio), 0.0), 0.999)


def _check_target(target: float) -> None:
    if not isinstance(target, (int, float)) or isinstance(target, bool) or not 0 < target < 1:
        raise TargetError(f"{FLAG} {target!r}: give the fraction of fine-tuning time to save, in (0, 1)")


def _slim_flop_ratios(base, task_info, coefficients, points: list[GridPoint]) -> tuple[list[float], int]:
    """Each candidate's slim-model linear FLOPs per step over the full model's, counted on a pruned copy."""
    from .finetune import _linear_flops_per_step, _seeded_model
    from .prune import prune
    from .ticket import draw_ticket

    import copy

    heads, ffn, step = coefficients
    pretrained = _seeded_model(base, task_info)
    full = _linear_flops_per_step(pretrained, task_info, base)
    ratios = []
    for point in points:
        model = copy.deepcopy(pretrained)  # loaded once: a BERT-base grid has 91 candidates
        prune(model, draw_ticket(heads, ffn, point.ticket_config(base.ticket), step=step))
        ratios.append(_linear_flops_per_step(model, task_info, base) / full)
    return ratios, full


def _calibrate(base, task_info, coefficients, point: GridPoint) -> dict:
    """The paired slim / full step-time ratio of `point`'s slim model on this machine (train.step_time_ratio)."""
    from .finetune import _accelerator_factory, _seeded_model
    from .prune import prune
    from .ticket import draw_ticket
    from .train import step_time_ratio

    heads, ffn, step = coefficients
    slim = _seeded_model(base, task_info)
    prune(slim, draw_ticket(heads, ffn, point.ticket_config(base.ticket), step=step))
    return step_time_ratio(slim, _seeded_model(base, task_info), task_info.train_features,
                           task_info.collator(), base.train_config(slim=True),
                           _accelerator_factory(base)())


def _least_pruned(rows: list[dict], key: str, target: float) -> dict | None:
    """The row reaching `target` by `key` with the most FLOPs kept (ties: the earlier, i.e. fewer heads pruned)."""
    reaching = [r for r in rows if r[key] >= target]
    return max(reaching, key=lambda r: r["flop_ratio"]) if reaching else None


def _steps(base, task_info) -> tuple[int, int]:
    """Optimizer steps of the full baseline and of the slim training (one process, as train_stage counts them)."""
    from .train import steps_per_epoch

    per_epoch = steps_per_epoch(len(task_info.train_features), base.train_config(slim=False))
    return math.ceil(base.epochs * per_epoch), math.ceil(base.earlybert_epochs * per_epoch)


def check_reachable(base, target: float) -> None:
    """Fail before the search when even a free search and the grid's most pruning cannot save `target` of the
    linear FLOPs: time, with its overhead, saves less still."""
    import torch

    from .archs import config_layer_shapes
    from .tasks import prepare_task

    _check_target(target)
    task_info = prepare_task(base)
    heads, ffn = config_layer_shapes(task_info.model_config)
    most = candidates(heads)[-1]  # the most heads and the largest FFN ratio: the fewest FLOPs
    uniform = ([torch.ones(n) for n in heads], [torch.ones(n) for n in ffn], None)  # any scores give the same shape
    (ratio,), _ = _slim_flop_ratios(base, task_info, uniform, [most])
    bound = expected_saving(0, 1.0, *_steps(base, task_info), ratio)
    if bound < target:
        raise TargetError(f"{FLAG} {target:g}: unreachable; even with a free search the grid's most pruning (heads "
                          f"{most.heads}, FFN {most.ffn_ratio:g}) saves at most {bound:.1%} of the linear FLOPs "
                          f"({base.earlybert_epochs:g} slim epochs against {base.epochs:g})")


def predict(base, search: dict, search_folder: Path, points: list[GridPoint]) -> dict:
    """Every point's FLOP ratio and predicted savings (time and FLOPs) after the search in `search_folder`, the
    time model calibrated on the most pruned of `points`: {"rows", "overhead_share", "calibrated_on", ...}."""
    from .finetune import COEFFICIENTS, load_coefficients
    from .tasks import prepare_task

    task_info = prepare_task(base)
    coefficients = load_coefficients(search_folder / COEFFICIENTS)
    full_steps, slim_steps = _steps(base, task_info)
    flop_ratios, _ = _slim_flop_ratios(base, task_info, coefficients, points)
    stage = search["stage"]
    rows = [{"heads": p.heads, "ffn_ratio": p.ffn_ratio, "flop_ratio": r,
             "predicted_saving_flops": expected_saving(stage["steps"], 1.0, full_steps, slim_steps, r)}
            for p, r in zip(points, flop_ratios)]
    most = min(range(len(points)), key=lambda i: flop_ratios[i])
    calibration = _calibrate(base, task_info, coefficients, points[most])
    a = overhead_share(flop_ratios[most], calibration["ratio"])
    for r in rows:
        r["predicted_saving"] = expected_saving(stage["step_time_s"], calibration["full_mean_step_s"], full_steps,
                                                slim_steps, a + (1 - a) * r["flop_ratio"])
    return {"rows": rows, "overhead_share": a,
            "calibrated_on": {"heads": points[most].heads, "ffn_ratio": points[most].ffn_ratio, **calibration},
            "search": {k: stage[k] for k in ("steps", "step_time_s")}, "full_steps": full_steps,
            "slim_steps": slim_steps}


def _unreachable(target: float, prediction: dict) -> TargetError:
    most, best = prediction["calibrated_on"], max(r["predicted_saving"] for r in prediction["rows"])
    return TargetError(f"{FLAG} {target:g}: unreachable on this machine; the most pruning in the grid "
                       f"(heads {most['heads']}, FFN {most['ffn_ratio']:g}) is predicted to save {best:.1%}")


def pick(base, target: float, search: dict, search_folder: Path) -> dict:
    """target.json's content: every candidate's FLOP ratio and predicted savings, the calibration, the pick."""
    from .archs import config_layer_shapes
    from .tasks import load_model_config

    num_heads = config_layer_shapes(load_model_config(base.model))[0]
    prediction = predict(base, search, search_folder, candidates(num_heads))
    rows = prediction.pop("rows")
    chosen = _least_pruned(rows, "predicted_saving", target)
    if chosen is None:
        raise _unreachable(target, {"rows": rows, **prediction})
    return {"target": target, "picked": {k: chosen[k] for k in ("heads", "ffn_ratio")},
            "predicted_saving": chosen["predicted_saving"], "predicted_saving_flops": chosen["predicted_saving_flops"],
            "flop_ratio": chosen["flop_ratio"], **prediction, "candidates": rows}


def reaching(target: float) -> Callable:
    """A sweep's `select` (see sweep.sweep): of the grid, the points predicted to save at least `target`."""
    _check_target(target)

    def select(base, grid: list[GridPoint], search: dict, search_folder: Path) -> tuple[list[GridPoint], dict]:
        prediction = predict(base, search, search_folder, grid)
        kept = [p for p, row in zip(grid, prediction["rows"]) if row["predicted_saving"] >= target]
        if not kept:
            raise _unreachable(target, prediction)
        return kept, {"target": target, **prediction}

    select.settings = {"target_saving": target}  # in the sweep's config.json: a resume must repeat it
    return select


def finetune_to_target(base, target: float, resume: bool = False, overwrite: bool = False) -> dict:
    """Search, pick the ratios reaching `target` (see the module's docstring), train the slim model at them; returns
    results.json's content: the pick, its predicted savings (time and FLOPs) and the measured one."""
    from accelerate import PartialState

    from .report import target_report
    from .runs import RunFolder

    _check_target(target)
    if base.method != "earlybert" or base.search_from:
        raise TargetError(f"{FLAG} picks an earlybert ticket: use method earlybert, without search_from")
    root = RunFolder(base.output, resume, overwrite, is_main=PartialState().is_main_process)
    settings = {**base.to_dict(), "target_saving": target}
    finished = root.check_resume(settings) if resume else None
    if finished is not None:
        return finished
    check_reachable(base, target)
    root.create().write_json("config.json", settings)
    search = _run_once(search_only, replace(base, output=str(root.path / "search")))
    chosen = root.read_json("target.json")
    if chosen is None:  # a timing decides the pick: a resumed run keeps the first one's
        chosen = pick(base, target, search, root.path / "search")
        root.write_json("target.json", chosen)
    point = GridPoint(chosen["picked"]["heads"], chosen["picked"]["ffn_ratio"])
    logger.info("target saving %.0f%%: picked %s, predicted %.1f%%", 100 * target, point.name,
                100 * chosen["predicted_saving"])
    run = _run_once(finetune, replace(base, output=str(root.path / "run"), ticket=point.ticket_config(base.ticket),
                                      search_from="../search"))
    results = {**{k: v for k, v in chosen.items() if k != "candidates"}, "task": run["task"], "score": run["score"],
               "headline_metric": run["headline_metric"],
               "measured_saving": run["fraction_saved_vs_estimated_full"],
               "theoretical_saving_flops": run["theoretical_fraction_saved_flops"],
               "ticket": run["ticket"], "run": "run"}
    if root.is_main:
        from .runs import atomic_write_text

        atomic_write_text(root.path / "report.md", target_report(results, chosen["candidates"]))
    root.write_json("results.json", results)  # last: its presence marks the run finished
    return results
