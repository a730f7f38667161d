"""The stop-time ablation on a tiny encoder and fixture data (8 steps per epoch): one search, paused at each stop
time to keep its coefficients, each ticket a cut of the coefficients of its step, each slim run charged the search up
to that step only; bad stop times fail in one line naming --stop-at."""

import json

import pytest

import earlybert as eb
from earlybert.ablate import ablate_stop, snapshot_name
from earlybert.cli import main
from earlybert.finetune import COEFFICIENTS, FinetuneConfig, load_coefficients, search_only
from earlybert.sweep import GridError

SETTINGS = dict(task="sst2", batch_size=8, lr=5e-4, epochs=2, earlybert_epochs=1, patience=2, checkpoint_every=3,
                seed=3)
STOP_AT, STEPS = [0.25, 0.5, 1.0], [2, 4, 8]


def config(encoder, data, output, **overrides) -> FinetuneConfig:
    return FinetuneConfig(**{"model": str(encoder), "data": str(data), "output": str(output), **SETTINGS, **overrides})


def read(path):
    return json.loads(path.read_text())


def test_stop_time_tickets_are_cuts_of_the_coefficients_of_their_steps(tiny_encoder, glue_dir, tmp_path):
    out = tmp_path / "stop"
    results = ablate_stop(config(tiny_encoder, glue_dir, out), STOP_AT)
    assert [(p["stop_at"], p["steps"]) for p in results["points"]] == list(zip(STOP_AT, STEPS))
    assert read(out / "search" / "search.json")["stage"]["steps"] == 8  # one search, to the latest stop time
    tickets = set()
    for fraction, step in zip(STOP_AT, STEPS):
        heads, ffn, saved_step = load_coefficients(out / "search" / snapshot_name(step))
        assert saved_step == step
        expected = eb.draw_ticket(heads, ffn, eb.TicketConfig(), step=step)
        ticket = eb.Ticket.load(out / f"stop{fraction:g}" / "ticket.json")
        assert (ticket.heads, ticket.ffn, ticket.step) == (expected.heads, expected.ffn, step)
        run = read(out / f"stop{fraction:g}" / "results.json")
        assert run["stages"]["search"]["steps"] == step  # charged the search up to its stop time only
        tickets.add(json.dumps(ticket.ffn))
    assert len(tickets) > 1  # the ticket moves while the search goes on
    assert read(out / "results.json") == json.loads(json.dumps(results))
    report = (out / "report.md").read_text()
    assert "| 25% of epoch 1 | 2 |" in report and "| 100% of epoch 1 | 8 |" in report
    assert "ablation.png" in report and (out / "ablation.png").stat().st_size > 0
    # pausing is exact: the coefficients at step 4 are those of a search that ran 4 steps without a pause
    alone = tmp_path / "alone"
    search_only(config(tiny_encoder, glue_dir, alone, epsilon=0.0, search_max_steps=4, search_epoch_fraction=0.5))
    head4, ffn4, _ = load_coefficients(out / "search" / snapshot_name(4))
    head, ffn, step = load_coefficients(alone / COEFFICIENTS)
    assert step == 4 and all((a == b).all() for a, b in zip(head4 + ffn4, head + ffn))


def test_bad_stop_times_fail_before_anything_is_written(tiny_encoder, glue_dir, tmp_path):
    with pytest.raises(GridError, match=r"stop_at 0.1: falls on search step 1 as an earlier stop time does"):
        ablate_stop(config(tiny_encoder, glue_dir, tmp_path / "never"), [0.05, 0.1])
    with pytest.raises(GridError, match=r"stop_at 1.5: a stop time is a fraction of the first epoch"):
        ablate_stop(config(tiny_encoder, glue_dir, tmp_path / "never"), [1.5])
    assert not (tmp_path / "never").exists()


def cli_args(encoder, data, output) -> list[str]:
    return ["ablate", "stop", "--model", str(encoder), "--task", "sst2", "--data", str(data), "--output", str(output),
            "--batch-size", "8", "--lr", "5e-4", "--epochs", "2", "--earlybert-epochs", "1", "--patience", "2"]


def test_the_command_runs_the_stop_ablation(tiny_encoder, glue_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main([*cli_args(tiny_encoder, glue_dir, out), "--stop-at", "0.5,1"]) == 0
    results = read(out / "results.json")
    assert [(p["stop_at"], p["steps"]) for p in results["points"]] == [(0.5, 4), (1, 8)]
    assert f"report: {out / 'report.md'}" in capsys.readouterr().out


@pytest.mark.parametrize("value,message", [
    ("0.05,0.1", "--stop-at 0.1: falls on search step 1 as an earlier stop time does (8 steps per epoch)"),
    ("0.5,2", "--stop-at 2: a stop time is a fraction of the first epoch, in (0, 1]"),
    ("0.5,x", "--stop-at 'x': is not a number"),
])
def test_bad_stop_flags_exit_2_with_one_line_naming_the_flag(value, message, tiny_encoder, glue_dir, tmp_path,
                                                             capsys):
    out = tmp_path / "never"
    assert main([*cli_args(tiny_encoder, glue_dir, out), "--stop-at", value]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("earlybert: error: ") and message in err and not out.exists()


def test_epochs_by_lr_scale_share_one_search(tiny_encoder, glue_dir, tmp_path):
    from earlybert.ablate import ablate_epochs

    out = tmp_path / "epochs"
    results = ablate_epochs(config(tiny_encoder, glue_dir, out, search_epoch_fraction=0.5), [0.5, 1], [1, 2])
    assert [(p["slim_epochs"], p["lr_scale"]) for p in results["points"]] == [(0.5, 1), (0.5, 2), (1, 1), (1, 2)]
    searched = eb.Ticket.load(out / "search" / "ticket.json")
    for p in results["points"]:
        run_dir = out / f"epochs{p['slim_epochs']:g}-lr{p['lr_scale']:g}"
        settings = read(run_dir / "config.json")
        assert (settings["earlybert_epochs"], settings["lr_scale"], settings["search_from"]) == \
            (p["slim_epochs"], p["lr_scale"], "../search")
        assert eb.Ticket.load(run_dir / "ticket.json").ffn == searched.ffn  # one ticket, the search's own
        assert read(run_dir / "results.json")["stages"]["train"]["steps"] == 8 * p["slim_epochs"]
    assert "| 0.5 | " in (out / "report.md").read_text() and (out / "ablation.png").exists()
    with pytest.raises(GridError, match="lr_scales 0: must be > 0"):
        ablate_epochs(config(tiny_encoder, glue_dir, tmp_path / "never"), [1], [0])


def test_the_command_runs_the_epochs_ablation_and_names_bad_flags(tiny_encoder, glue_dir, tmp_path, capsys):
    args = ["ablate", "epochs", *cli_args(tiny_encoder, glue_dir, tmp_path / "cli")[2:],
            "--search-epoch-fraction", "0.5"]
    assert main([*args, "--slim-epochs", "0.5", "--lr-scales", "1,2"]) == 0
    assert [(p["slim_epochs"], p["lr_scale"]) for p in read(tmp_path / "cli" / "results.json")["points"]] == \
        [(0.5, 1), (0.5, 2)]
    assert "| epochs | lr x1 | lr x2 |" in capsys.readouterr().out
    args[args.index("--output") + 1] = str(tmp_path / "never")
    assert main([*args, "--lr-scales", "1,1"]) == 2
    assert "earlybert: error: --lr-scales 1: is given twice" in capsys.readouterr().err


def test_scope_cuts_one_search_and_lambda_runs_one_search_each(tiny_encoder, glue_dir, tmp_path):
    from earlybert.ablate import ablate_lambda, ablate_scope

    out = tmp_path / "scope"
    results = ablate_scope(config(tiny_encoder, glue_dir, out, search_epoch_fraction=0.5))
    heads, ffn, step = load_coefficients(out / "search" / COEFFICIENTS)
    for p in results["points"]:
        expected = eb.draw_ticket(heads, ffn, eb.TicketConfig(ffn_scope=p["scope"]), step=step)
        assert eb.Ticket.load(out / f"scope{p['scope']}" / "ticket.json").ffn == expected.ffn
    assert [p["scope"] for p in results["points"]] == ["global", "layer"]
    assert "| scope | accuracy |" in (out / "report.md").read_text() and (out / "ablation.png").exists()
    out = tmp_path / "lambda"
    results = ablate_lambda(config(tiny_encoder, glue_dir, out, search_epoch_fraction=0.5), [1e-4, 0.0])
    assert [read(out / f"lambda{v:g}" / "config.json")["gates"]["head_l1"] for v in (1e-4, 0.0)] == [1e-4, 0.0]
    assert not (out / "search").exists() and [p["lambda"] for p in results["points"]] == [1e-4, 0.0]
    with pytest.raises(GridError, match="lambdas -1: must be >= 0"):
        ablate_lambda(config(tiny_encoder, glue_dir, tmp_path / "never"), [-1])


def test_bad_lambdas_exit_2_naming_the_flag(tiny_encoder, glue_dir, tmp_path, capsys):
    args = ["ablate", "lambda", *cli_args(tiny_encoder, glue_dir, tmp_path / "never")[2:]]
    assert main([*args, "--lambdas", "1e-4,-1"]) == 2
    assert "earlybert: error: --lambdas -1: must be >= 0" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()
