import json

import pytest
import torch

import earlybert as eb
from earlybert.ticket import Ticket, TicketConfig, draw_ticket, mask_distance, random_ticket

T = torch.tensor


def test_heads_go_by_smallest_magnitude_per_layer():
    heads = [T([0.9, -0.05, 0.3, -2.0, 0.1, 0.5]), T([1.0, 1.0, 1.0, 1.0, 1.0, 1.0])]
    ffn = [torch.ones(10), torch.ones(10)]
    ticket = draw_ticket(heads, ffn, TicketConfig(head_count=2, ffn_ratio=0.0))
    assert ticket.heads[0] == [0, 2, 3, 5]  # -0.05 and 0.1 are the smallest |c|; -2.0 is kept
    assert ticket.heads[1] == [2, 3, 4, 5]  # ties: lower indices go first, deterministically
    assert ticket.ffn == [list(range(10))] * 2


def test_default_ratios_are_the_papers():
    heads = [torch.rand(12) for _ in range(12)]
    ffn = [torch.rand(3072) for _ in range(12)]
    ticket = draw_ticket(heads, ffn)
    assert ticket.kept_heads == [8] * 12  # 4 of 12 pruned in every layer
    assert sum(ticket.kept_ffn) == 12 * 3072 - round(0.4 * 12 * 3072)
    assert ticket.config["ffn_scope"] == "global"


def test_global_ffn_prunes_across_layers_and_respects_min_per_layer():
    heads = [torch.ones(2)] * 3
    ffn = [T([5.0, 6, 7, 8]), T([0.1, 0.2, 0.3, 0.4]), T([1.0, 2, 3, 4])]
    ticket = draw_ticket(heads, ffn, TicketConfig(head_count=0, ffn_ratio=0.5, min_ffn=1))
    # 6 of 12 go: layer 1 may lose only 3 (min_ffn=1), then the three smallest of layer 2.
    assert ticket.ffn == [[0, 1, 2, 3], [3], [3]]
    ticket = draw_ticket(heads, ffn, TicketConfig(head_count=0, ffn_ratio=0.5, min_ffn=2))
    assert ticket.ffn == [[2, 3], [2, 3], [2, 3]]  # two per layer may go, smallest first


def test_layerwise_ffn_and_rounding_to_a_multiple():
    heads = [torch.ones(2)] * 2
    ffn = [torch.arange(100.0), torch.arange(100.0).flip(0)]
    ticket = draw_ticket(heads, ffn, TicketConfig(head_count=0, ffn_ratio=0.4, ffn_scope="layer"))
    assert ticket.ffn[0] == list(range(40, 100)) and ticket.ffn[1] == list(range(60))
    rounded = draw_ticket(heads, ffn, TicketConfig(head_count=0, ffn_ratio=0.4, ffn_scope="layer", ffn_multiple=16))
    assert rounded.kept_ffn == [64, 64]  # 60 rounds to the nearest multiple of 16
    assert rounded.ffn[0] == list(range(36, 100))
    small = draw_ticket(heads, ffn, TicketConfig(head_count=0, ffn_ratio=0.9, ffn_scope="layer", ffn_multiple=64))
    assert small.kept_ffn == [64, 64]  # never below one multiple


def test_bad_settings_raise_clear_errors():
    with pytest.raises(ValueError, match=r"head_ratio must be in \[0, 1\)"):
        TicketConfig(head_ratio=1.0)
    with pytest.raises(ValueError, match=r"ffn_ratio must be in \[0, 1\)"):
        TicketConfig(ffn_ratio=-0.1)
    with pytest.raises(ValueError, match="not both"):
        TicketConfig(head_ratio=0.5, head_count=2)
    with pytest.raises(ValueError, match="ffn_scope"):
        TicketConfig(ffn_scope="row")
    with pytest.raises(ValueError, match="cannot prune 12 of 12 heads"):
        draw_ticket([torch.ones(12)], [torch.ones(8)], TicketConfig(head_count=12))
    with pytest.raises(ValueError, match="cannot prune 13 of 12 heads"):
        draw_ticket([torch.ones(12)], [torch.ones(8)], TicketConfig(head_count=13))
    with pytest.raises(ValueError, match="fewer than min_ffn"):
        draw_ticket([torch.ones(2)], [torch.ones(3)], TicketConfig(min_ffn=4))
    with pytest.raises(ValueError, match="same, non-zero number of layers"):
        draw_ticket([torch.ones(2)], [torch.ones(3), torch.ones(3)])


def test_invalid_tickets_are_refused():
    good = dict(heads=[[0, 1]], ffn=[[2]], num_heads=[2], ffn_sizes=[3])
    Ticket(**good)
    with pytest.raises(ValueError, match="keeps no heads in layer 0"):
        Ticket(**{**good, "heads": [[]]})
    with pytest.raises(ValueError, match=r"unique, ascending and in \[0, 3\)"):
        Ticket(**{**good, "ffn": [[3]]})
    with pytest.raises(ValueError, match="unique, ascending"):
        Ticket(**{**good, "heads": [[1, 0]]})
    with pytest.raises(ValueError, match="inconsistent numbers of layers"):
        Ticket(**{**good, "num_heads": [2, 2]})
    with pytest.raises(ValueError, match="version 99"):
        Ticket(**good, version=99)


def test_json_round_trip_and_load_errors(tmp_path):
    ticket = draw_ticket([torch.randn(4)] * 2, [torch.randn(37)] * 2, step=17)
    path = tmp_path / "ticket.json"
    ticket.save(path)
    data = json.loads(path.read_text())
    assert data["version"] == 1 and data["step"] == 17 and data["config"]["ffn_ratio"] == 0.4
    assert Ticket.load(path) == ticket
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write left no temp file
    with pytest.raises(ValueError, match="does not exist"):
        Ticket.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Ticket.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"weights": 1}')
    with pytest.raises(ValueError, match="unknown fields"):
        Ticket.load(tmp_path / "other.json")


def test_random_ticket_has_the_same_shape_and_depends_only_on_seed():
    like = draw_ticket([torch.randn(12)] * 3, [torch.randn(64) * (i + 1) for i in range(3)])
    a, b, c = random_ticket(like, 0), random_ticket(like, 0), random_ticket(like, 1)
    assert a.kept_heads == like.kept_heads and a.kept_ffn == like.kept_ffn
    assert a.heads == b.heads and a.ffn == b.ffn
    assert (a.heads, a.ffn) != (c.heads, c.ffn)
    assert a.config["random_seed"] == 0


def test_mask_distance_is_normalised_hamming():
    a = Ticket(heads=[[0, 1], [0]], ffn=[[0, 1, 2], [0, 1]], num_heads=[4, 4], ffn_sizes=[4, 4])
    b = Ticket(heads=[[0, 2], [0]], ffn=[[0, 1, 2], [2, 3]], num_heads=[4, 4], ffn_sizes=[4, 4])
    d = mask_distance(a, b)
    assert d.heads_per_layer == [0.5, 0.0] and d.heads == 2 / 8
    assert d.ffn_per_layer == [0.0, 1.0] and d.ffn == 4 / 8
    assert mask_distance(a, a).heads == mask_distance(a, a).ffn == 0
    with pytest.raises(ValueError, match="differently shaped"):
        mask_distance(a, eb.full_ticket([4], [4]))


def greedy_kept_counts(ffn_scores, ratio, min_ffn):
    """The rule as the paper states it, one neuron at a time: smallest |c| first, never below min_ffn."""
    sizes = [len(x) for x in ffn_scores]
    flat = [(abs(v), layer, i) for layer, x in enumerate(ffn_scores) for i, v in enumerate(x.tolist())]
    kept, pruned, to_prune = list(sizes), 0, int(ratio * sum(sizes) + 0.5)
    for _, layer, _ in sorted(flat):  # ties: lower layer, then lower index
        if pruned == to_prune:
            break
        if kept[layer] > min_ffn:
            kept[layer] -= 1
            pruned += 1
    return kept


@pytest.mark.parametrize("seed", range(20))
def test_global_draw_matches_the_one_at_a_time_rule_with_ties(seed):
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(3, 40, (4,), generator=g).tolist()
    # few distinct values: many ties, across and within layers; some layers much smaller than others
    ffn = [torch.randint(-3, 4, (n,), generator=g).float() * (0.1 if layer == 2 else 1.0) for layer, n in enumerate(sizes)]
    ratio = [0.2, 0.4, 0.7, 0.9][seed % 4]
    min_ffn = 1 + seed % 3
    ticket = draw_ticket([torch.ones(2)] * 4, ffn, TicketConfig(head_count=0, ffn_ratio=ratio, min_ffn=min_ffn))
    assert ticket.kept_ffn == greedy_kept_counts(ffn, ratio, min_ffn)
    for scores, keep in zip(ffn, ticket.ffn):  # the kept ones are the largest |c| of their layer
        dropped = sorted(set(range(len(scores))) - set(keep))
        if dropped:
            assert scores.abs()[dropped].max() <= scores.abs()[keep].min()


def test_global_scope_with_rounding_to_a_multiple():
    ffn = [torch.arange(1.0, 101.0) * (layer + 1) for layer in range(3)]
    ticket = draw_ticket([torch.ones(2)] * 3, ffn, TicketConfig(head_count=0, ffn_ratio=0.4, ffn_multiple=32))
    assert all(k % 32 == 0 or k == 100 for k in ticket.kept_ffn)
    unrounded = draw_ticket([torch.ones(2)] * 3, ffn, TicketConfig(head_count=0, ffn_ratio=0.4))
    assert all(abs(a - b) <= 16 for a, b in zip(ticket.kept_ffn, unrounded.kept_ffn))


def test_ticket_indices_must_be_integers():
    with pytest.raises(ValueError, match="must be integers"):
        Ticket(heads=[[0.0, 1.0]], ffn=[[0]], num_heads=[2], ffn_sizes=[3])
    with pytest.raises(ValueError, match="must be integers"):
        Ticket(heads=[[True]], ffn=[[0]], num_heads=[2], ffn_sizes=[3])
