import importlib
import json

import numpy as np
import pytest
import torch

import earlybert as eb
from earlybert.search import EarlyBird, SearchConfig, forecast_distance
from earlybert.ticket import Ticket

from conftest import build, inputs_for


def ticket_keeping(ffn_kept: list[int], heads_kept=(0, 1, 2)) -> Ticket:
    """One layer, 4 heads, 20 FFN neurons."""
    return Ticket(heads=[list(heads_kept)], ffn=[sorted(ffn_kept)], num_heads=[4], ffn_sizes=[20])


def feed(tracker: EarlyBird, tickets: list[Ticket]) -> int | None:
    """Add tickets as steps 1, 2, ...; the step at which the tracker says stop, or None."""
    for step, ticket in enumerate(tickets, start=1):
        tracker.add(step, ticket)
        if tracker.should_stop(step):
            return step
    return None


def test_stable_masks_stop_after_patience_plus_one_under_the_papers_rule():
    tracker = EarlyBird(search_config=SearchConfig(epsilon=0.1, patience=5, window=0, max_steps=100))
    stop = feed(tracker, [ticket_keeping(list(range(12)))] * 10)
    assert stop == 6 and tracker.stop_reason == "early-bird"


def test_stable_masks_stop_once_the_history_covers_the_window():
    tracker = EarlyBird(search_config=SearchConfig(epsilon=0.1, patience=5, window=0.25, max_steps=100))
    assert tracker.search_config.window_steps == 25
    stop = feed(tracker, [ticket_keeping(list(range(12)))] * 40)
    assert stop == 26 and tracker.stop_reason == "early-bird"  # step 1 is 25 steps before step 26


def drifting(n_steps: int, units: int = 400, kept: int = 240, every: int = 1) -> list[tuple[int, Ticket]]:
    """One kept neuron swapped for a pruned one every step: distance 2/units per step, for ever."""
    out = []
    for step in range(1, n_steps + 1):
        keep = [(j + step) % units for j in range(kept)]
        if step % every == 0:
            out.append((step, Ticket(heads=[[0, 1, 2]], ffn=[sorted(keep)], num_heads=[4], ffn_sizes=[units])))
    return out


def run_rule(records: list[tuple[int, Ticket]], **config) -> int | None:
    tracker = EarlyBird(search_config=SearchConfig(**config))
    for step, ticket in records:
        tracker.add(step, ticket)
        if tracker.should_stop(step) and tracker.stop_reason == "early-bird":
            return step
    return None


def test_a_slowly_drifting_mask_passes_only_once_the_rest_of_the_budget_cannot_move_it():
    # 0.005 per step: each mask is within 0.1 of the previous five (0.025) yet 0.3 from the one 60 steps back
    records = drifting(200)
    assert run_rule(records, epsilon=0.1, patience=5, window=0, max_steps=200) == 6  # the paper's rule passes it
    final = records[-1][1]
    for every in (1, 4, 10):
        stop = run_rule(drifting(200, every=every), epsilon=0.098, patience=5, window=0.25, max_steps=200)
        # 0.005 * (200 - step) < 0.098 first holds at step 181 (0.095); sparser records stop at their first after it
        assert 181 <= stop < 181 + every
        ticket = dict(drifting(200))[stop]
        assert eb.mask_distance(ticket, final).ffn < 0.098  # the ticket the whole budget would draw, near enough
    # the same drift over a budget five times as long is still far from settled at step 200
    assert run_rule(records, epsilon=0.098, patience=5, window=0.25, max_steps=1000) is None


META = torch.device("meta")


def record_on_meta_until_converged(tracker: EarlyBird, first: int) -> int | None:
    """Masks of one 4-head, 20-neuron layer on the meta device (an accelerator's stand-in on a machine without one),
    one a step from `first` on; the step at which the windowed rule says converged."""
    for step in range(first, 40):
        tracker._append(step, [4], [20], torch.zeros(4, dtype=torch.bool, device=META),
                        torch.zeros(20, dtype=torch.bool, device=META))
        if tracker.converged():
            return step
    return None


def test_the_windowed_rule_computes_on_the_device_of_the_masks(monkeypatch):
    # A search on a GPU draws its masks there; the rule once built its lags on the host and crashed on every GPU
    # run. 'meta' stands in for the accelerator on a machine without one.
    devices = []

    def forecast(lags, distances, steps_left):
        devices.append((lags.device, distances.device))
        return 0.0  # meta tensors hold no values: the verdict itself is tested above

    # the module, not the function that `earlybert.search` names on the package
    monkeypatch.setattr(importlib.import_module("earlybert.search"), "forecast_distance", forecast)
    tracker = EarlyBird(search_config=SearchConfig(epsilon=0.1, window=0.25, max_steps=100))
    assert record_on_meta_until_converged(tracker, first=1) == 26
    assert devices == [(META, META)] * 2  # heads, then FFN


def test_a_resumed_search_moves_its_reloaded_history_to_the_device_of_new_masks(monkeypatch):
    # load_state_dict rebuilds the history on the host; after a resume the gates record on their accelerator.
    monkeypatch.setattr(importlib.import_module("earlybert.search"), "forecast_distance", lambda *_: 0.0)
    tracker = EarlyBird(search_config=SearchConfig(epsilon=0.1, window=0.25, max_steps=100))
    for step in range(1, 11):
        tracker.add(step, ticket_keeping(list(range(12))))
    resumed = EarlyBird(search_config=tracker.search_config)
    resumed.load_state_dict(json.loads(json.dumps(tracker.state_dict())))
    assert record_on_meta_until_converged(resumed, first=11) == 26
    assert {m.device for m in resumed.head_masks + resumed.ffn_masks} == {META}


def test_the_forecast_separates_threshold_swaps_from_drift():
    lags = torch.arange(1, 17, dtype=torch.float64)
    assert forecast_distance(lags, 0.02 + 0.005 * lags, 10) == pytest.approx(0.07)
    swaps = torch.full((16,), 0.015, dtype=torch.float64)  # units trading places, no drift: the swaps' level
    assert forecast_distance(lags, swaps, 1000) == pytest.approx(0.015)
    alternating = torch.tensor([0.0, 0.015] * 8, dtype=torch.float64)
    assert forecast_distance(lags, alternating, 50) < 0.02
    assert forecast_distance(lags, 0.05 - 0.001 * lags, 100) == pytest.approx(0.0415)  # shrinking: no drift
    for bad_lags, bad_distances in (([4.0], [0.02]), ([4.0, 4.0], [0.02, 0.03]), ([0.0, 2.0], [0.0, 0.01]), ([], [])):
        with pytest.raises(ValueError, match="two different lags"):  # no line to fit: never a silent NaN verdict
            forecast_distance(torch.tensor(bad_lags), torch.tensor(bad_distances), 10)


def test_the_windowed_rule_needs_two_records_inside_its_window():
    stable = ticket_keeping(list(range(12)))
    # window 25 steps; records every 20 steps leave at most one inside it: the drift is unknown, the search runs on
    sparse = [(step, stable) for step in range(20, 101, 20)]
    assert run_rule(sparse, epsilon=0.1, window=0.25, max_steps=100) is None
    every_10 = [(step, stable) for step in range(10, 101, 10)]
    # at step 40 the history reaches back 25 steps (to step 10) and steps 20 and 30 lie inside the window
    assert run_rule(every_10, epsilon=0.1, window=0.25, max_steps=100) == 40


def test_units_swapping_at_the_threshold_do_not_block_the_stop():
    # a settled ticket whose 3 marginal neurons trade places with 3 pruned ones every other step (distance 0.015)
    settled, swapped = list(range(240)), list(range(237)) + [240, 241, 242]
    records = [(step, ticket_of(settled if step % 2 else swapped)) for step in range(1, 201)]
    assert run_rule(records, epsilon=0.1, patience=5, window=0.25, max_steps=200) == 51
    sparse = [(step, t) for step, t in records if step % 5 == 0]
    assert run_rule(sparse, epsilon=0.1, patience=5, window=0.25, max_steps=200) == 55  # the same, to the interval


def ticket_of(ffn_kept: list[int], units: int = 400) -> Ticket:
    return Ticket(heads=[[0, 1, 2]], ffn=[sorted(ffn_kept)], num_heads=[4], ffn_sizes=[units])


def test_changing_masks_run_to_the_budget():
    tracker = EarlyBird(search_config=SearchConfig(epsilon=0.1, patience=2, window=0, max_steps=8))
    # each mask moves 4 of 20 neurons (distance 0.2 >= epsilon): never converges
    tickets = [ticket_keeping([(j + 2 * i) % 20 for j in range(12)]) for i in range(10)]
    assert feed(tracker, tickets) == 8 and tracker.stop_reason == "budget"


def test_one_outlier_in_the_window_delays_the_stop():
    base, moved = list(range(12)), list(range(12)) + [15]  # distance 1/20 = 0.05 < 0.1
    far = list(range(8, 20))  # distance 8/20 from base
    tracker = EarlyBird(search_config=SearchConfig(epsilon=0.1, patience=3, window=0, max_steps=100))
    sequence = [base, moved, far, base, moved, base, base, base]
    stop = feed(tracker, [ticket_keeping(k) for k in sequence])
    # steps 4-6 still see `far` (step 3) among their previous three; step 7 sees base, moved, base
    assert stop == 7 and tracker.stop_reason == "early-bird"
    assert tracker.steps == [1, 2, 3, 4, 5, 6, 7]


def test_epsilon_is_strict_and_heads_count_too():
    same_ffn = list(range(12))
    # moving one head of 4 is distance 0.5 on heads even with identical FFN masks
    head_moves = [ticket_keeping(same_ffn, (0, 1, 2)), ticket_keeping(same_ffn, (0, 1, 3))] * 5
    tracker = EarlyBird(search_config=SearchConfig(epsilon=0.4, patience=1, window=0, max_steps=10))
    assert feed(tracker, head_moves) == 10 and tracker.stop_reason == "budget"
    # distance exactly epsilon does not count as converged
    a, b = ticket_keeping(list(range(12))), ticket_keeping(list(range(11)) + [12])  # 2/20 = 0.1
    tracker = EarlyBird(search_config=SearchConfig(epsilon=0.1, patience=1, window=0, max_steps=3))
    assert feed(tracker, [a, b, a]) == 3 and tracker.stop_reason == "budget"


def test_budget_as_a_fraction_of_an_epoch():
    assert SearchConfig(max_epoch_fraction=0.2, steps_per_epoch=2105).budget == 421
    assert SearchConfig(max_epoch_fraction=0.2, steps_per_epoch=2105, max_steps=100).budget == 100
    with pytest.raises(ValueError, match="needs a budget"):
        SearchConfig()
    with pytest.raises(ValueError, match="needs steps_per_epoch"):
        SearchConfig(max_epoch_fraction=0.2)
    with pytest.raises(ValueError, match="epsilon"):
        SearchConfig(epsilon=2, max_steps=1)


def test_distance_matrix_is_the_figure_1_data():
    tracker = EarlyBird(search_config=SearchConfig(max_steps=100))
    kept = [list(range(12)), list(range(12)) + [15], list(range(8, 20))]
    for step, k in enumerate(kept, start=1):
        tracker.add(step * 10, ticket_keeping(k))
    ffn = tracker.distance_matrix("ffn")
    assert ffn.shape == (3, 3) and np.allclose(ffn, ffn.T) and np.all(np.diag(ffn) == 0)
    assert ffn[0, 1] == pytest.approx(1 / 20) and ffn[0, 2] == pytest.approx(16 / 20)
    assert np.allclose(tracker.distance_matrix("ffn", layer=0), ffn)
    assert np.all(tracker.distance_matrix("heads") == 0)
    with pytest.raises(ValueError, match="steps must increase"):
        tracker.add(5, ticket_keeping(kept[0]))
    history = json.loads(json.dumps(tracker.to_dict()))
    assert history["steps"] == [10, 20, 30] and len(history["ffn_masks"]) == 3
    restored = EarlyBird()
    restored.load_state_dict(history)
    assert np.array_equal(restored.distance_matrix("ffn"), ffn) and restored.ticket == tracker.ticket


def test_distance_matrix_agrees_with_pairwise_mask_distance():
    g = torch.Generator().manual_seed(0)
    tracker = EarlyBird(search_config=SearchConfig(max_steps=100))
    for step in range(1, 8):
        heads = [torch.rand(6, generator=g) for _ in range(3)]
        ffn = [torch.rand(n, generator=g) for n in (20, 30, 25)]
        tracker.add(step, eb.draw_ticket(heads, ffn))
    tickets = []
    for heads, ffn in zip(tracker.head_masks, tracker.ffn_masks):
        split_h, split_f = heads.split(tracker.num_heads), ffn.split(tracker.ffn_sizes)
        tickets.append(Ticket(heads=[m.nonzero().flatten().tolist() for m in split_h],
                              ffn=[m.nonzero().flatten().tolist() for m in split_f],
                              num_heads=tracker.num_heads, ffn_sizes=tracker.ffn_sizes))
    for kind in ("heads", "ffn"):
        for layer in (None, 0, 2):
            matrix = tracker.distance_matrix(kind, layer)
            for i in range(7):
                for j in range(7):
                    d = eb.mask_distance(tickets[i], tickets[j])
                    expected = getattr(d, kind) if layer is None else getattr(d, f"{kind}_per_layer")[layer]
                    assert matrix[i, j] == pytest.approx(expected, abs=1e-12)


def test_record_draws_from_gates_every_n_steps():
    model = build("bert", eb.slim.AUTO_CLASSES[0])
    gates = eb.add_gates(model)
    tracker = EarlyBird(search_config=SearchConfig(max_steps=5, record_every=2, patience=5, window=0))
    stops = [tracker.record(step, model) for step in range(1, 6)]
    assert stops == [False, False, False, False, True] and tracker.steps == [2, 4, 5]
    assert tracker.stop_reason == "budget"
    assert tracker.ticket.num_heads == [len(g) for g in gates.head]
    assert tracker.ticket.ffn_scores is not None and len(tracker.ffn_masks) == 3  # history keeps masks only


def test_search_loop_trains_gates_and_stops_within_budget():
    model = build("bert", eb.slim.AUTO_CLASSES[4])  # sequence classification
    gates = eb.add_gates(model)
    batch = {**inputs_for(model), "labels": torch.tensor([0, 1])}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    result = eb.search(model, [batch], optimizer, search_config=SearchConfig(max_steps=50, patience=3))
    assert result.history.stop_reason in ("early-bird", "budget")
    assert result.steps == len(result.losses) <= 50
    assert result.ticket is result.history.ticket
    assert any((g.detach() != 1).any() for g in gates.parameters())


def test_search_with_frozen_gates_converges_immediately():
    model = build("bert", eb.slim.AUTO_CLASSES[4])
    gates = eb.add_gates(model)
    batch = {**inputs_for(model), "labels": torch.tensor([0, 1])}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    result = eb.search(model, [batch], optimizer, search_config=SearchConfig(max_steps=50, patience=5))
    # the history must cover the window (0.25 x 50 = 13 steps) before the first record can be compared
    assert result.history.stop_reason == "early-bird" and result.steps == 1 + 13
    with pytest.raises(ValueError, match="no batches"):
        eb.search(model, [], optimizer, search_config=SearchConfig(max_steps=5))
    assert gates is eb.get_gates(model)


def test_recorded_masks_are_the_masks_of_the_ticket_drawn_from_the_same_coefficients():
    """record() draws masks where the gates live and builds the Ticket only when asked: both must agree."""
    model = build("bert", eb.slim.AUTO_CLASSES[0])
    gates = eb.add_gates(model)
    g = torch.Generator().manual_seed(0)
    for config in (eb.TicketConfig(), eb.TicketConfig(ffn_scope="layer"), eb.TicketConfig(ffn_multiple=4)):
        tracker = EarlyBird(config, SearchConfig(max_steps=3))
        for step in range(1, 4):
            with torch.no_grad():
                for p in gates.parameters():
                    p.copy_(torch.randn(p.shape, generator=g))
            tracker.record(step, model)
            ticket = eb.draw_ticket(*gates.scores(), config, step=step)
            assert torch.equal(tracker.head_masks[-1], torch.cat(ticket.head_masks()))
            assert torch.equal(tracker.ffn_masks[-1], torch.cat(ticket.ffn_masks()))
        assert tracker.ticket == ticket and tracker.ticket.step == 3


def test_the_penalty_gradient_is_lambda_sign_c_added_once():
    model = build("bert", eb.slim.AUTO_CLASSES[4])
    gates = eb.add_gates(model)
    with torch.no_grad():
        gates.head[0].copy_(torch.linspace(-1, 1, gates.head[0].numel()))  # negative, zero and positive gates
    gates.ffn[0].grad = torch.full_like(gates.ffn[0], 0.5)  # a task gradient already there
    config = eb.GateConfig(head_l1=1e-2, ffn_l1=1e-3)
    eb.add_penalty_gradient(model, config)
    assert torch.equal(gates.head[0].grad, 1e-2 * torch.sign(gates.head[0]))  # created where there was none
    assert torch.equal(gates.ffn[0].grad, 0.5 + 1e-3 * torch.sign(gates.ffn[0]))
    # the minimal loop's gate gradient at its step is the task gradient plus exactly that
    fresh = build("bert", eb.slim.AUTO_CLASSES[4])
    fresh_gates = eb.add_gates(fresh)
    batch = {**inputs_for(fresh), "labels": torch.tensor([0, 1])}
    fresh.eval()  # no dropout: both forward passes alike (the search's model.train() is undone by the loss_fn)
    fresh(**batch).loss.backward()
    task = [g.grad.clone() for g in fresh_gates.parameters()]
    fresh.zero_grad(set_to_none=True)
    seen = []
    optimizer = torch.optim.SGD(fresh.parameters(), lr=0.0)
    optimizer.register_step_pre_hook(lambda *_: seen.append([g.grad.clone() for g in fresh_gates.parameters()]))
    eb.search(fresh, [batch], optimizer, search_config=SearchConfig(max_steps=1), gate_config=config,
              loss_fn=lambda m, b: m.eval()(**b).loss)
    strengths = [config.head_l1] * len(fresh_gates.head) + [config.ffn_l1] * len(fresh_gates.ffn)
    for got, t, g, lam in zip(seen[0], task, fresh_gates.parameters(), strengths):
        assert torch.allclose(got, t + lam * torch.sign(g.detach()), atol=1e-7)


def test_the_search_stage_penalty_is_not_clipped_with_the_task_gradient(tiny_encoder, glue_dir, tmp_path):
    """Clipping the gradients to (almost) nothing leaves the penalty whole: with plain SGD at lr 1 on the gates,
    one step moves every gate by lambda * sign(c), whatever the task gradient was."""
    from accelerate import Accelerator

    from earlybert.data import padding_collator
    from earlybert.finetune import FinetuneConfig
    from earlybert.runs import RunFolder
    from earlybert.search import run_search
    from earlybert.tasks import load_model_for, prepare_task
    from earlybert.ticket import TicketConfig
    from earlybert.train import TrainConfig

    config = FinetuneConfig(model=str(tiny_encoder), task="sst2", data=str(glue_dir), output="unused")
    info = prepare_task(config)
    model = load_model_for(config.model, info)
    gate_config = eb.GateConfig(head_l1=1e-2, ffn_l1=1e-3)
    folder = RunFolder(tmp_path / "run", resume=False, overwrite=False).create()
    train = TrainConfig(batch_size=8, max_steps=1, max_grad_norm=1e-12, checkpoint_every=0)
    accelerator = Accelerator(cpu=True)
    run_search(model, info.train_features, padding_collator(info.tokenizer), train, SearchConfig(max_steps=1),
               TicketConfig(), gate_config, accelerator, accelerator, folder,
               optimizer_fn=lambda m: torch.optim.SGD(m.parameters(), lr=1.0))
    gates = eb.get_gates(model)
    for params, lam in ((gates.head, 1e-2), (gates.ffn, 1e-3)):
        for g in params:  # all gates start at 1: sign(c) = 1
            assert torch.allclose(g.detach(), torch.full_like(g, 1 - lam), atol=1e-9)
