import pytest
import torch

import earlybert as eb
from earlybert.archs import blocks, get_arch, layer_shapes

from conftest import FAMILY_HEADS, build, inputs_for, max_diff, outputs


def hand_ticket(model, seed=0, **config):
    """A ticket drawn from random coefficients with the given TicketConfig settings."""
    g = torch.Generator().manual_seed(seed)
    heads, ffn = layer_shapes(model)
    scores = [torch.randn(n, generator=g) for n in heads], [torch.randn(n, generator=g) for n in ffn]
    return eb.draw_ticket(*scores, eb.TicketConfig(**config))


def masked_reference(model, ticket, batch):
    """Outputs of the gated model with the pruned gates at 0 and the kept ones at 1."""
    gates = eb.add_gates(model)
    gates.zero_pruned(ticket)
    out = outputs(model, batch)
    eb.remove_gates(model)
    return out


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("family,auto", FAMILY_HEADS)
def test_pruned_model_equals_masked_model(family, auto, attn):
    model = build(family, auto, attn)
    batch = inputs_for(model)
    ticket = hand_ticket(model, head_ratio=0.5, ffn_ratio=0.4)
    reference = masked_reference(model, ticket, batch)
    eb.prune(model, ticket)
    assert layer_shapes(model) == (ticket.kept_heads, ticket.kept_ffn)
    assert max_diff(outputs(model, batch), reference) < 1e-5


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_matrices_really_shrink_and_attributes_follow(family):
    model = build(family, eb.slim.AUTO_CLASSES[0])
    arch = get_arch(model)
    ticket = eb.Ticket(heads=[[1, 3], [0]], ffn=[list(range(0, 37, 2)), [5]], num_heads=[4, 4], ffn_sizes=[37, 37])
    block0 = blocks(model)[0]
    w_q = block0.get_submodule(arch.query).weight.detach().clone()
    w_2 = block0.get_submodule(arch.ffn_out).weight.detach().clone()
    eb.prune(model, ticket)
    d = 8  # 32 hidden / 4 heads
    q = block0.get_submodule(arch.query)
    assert q.weight.shape == (2 * d, 32) and q.out_features == 2 * d and q.bias.shape == (2 * d,)
    assert torch.equal(q.weight[:d], w_q[d : 2 * d]) and torch.equal(q.weight[d:], w_q[3 * d : 4 * d])
    assert block0.get_submodule(arch.attn_output).weight.shape == (32, 2 * d)
    assert block0.get_submodule(arch.ffn_in).weight.shape == (19, 32)
    assert torch.equal(block0.get_submodule(arch.ffn_out).weight, w_2[:, ::2])
    attention = block0.get_submodule(arch.attention)
    assert getattr(attention, arch.head_count_attr) == 2
    assert getattr(attention, arch.head_dim_attr) == d
    assert model.config.layer_num_heads == [2, 1] and model.config.layer_intermediate_sizes == [19, 1]
    assert model.config.model_type == f"earlybert_{family}"


def test_full_ticket_is_identity():
    model = build("roberta", eb.slim.AUTO_CLASSES[4])
    batch = inputs_for(model)
    before = outputs(model, batch)
    eb.prune(model, eb.full_ticket(*layer_shapes(model)))
    assert max_diff(outputs(model, batch), before) == 0


def test_pruned_model_trains_and_keeps_dtype():
    model = build("bert", eb.slim.AUTO_CLASSES[4]).to(torch.bfloat16)
    eb.prune(model, hand_ticket(model))
    assert all(p.dtype == torch.bfloat16 and p.requires_grad for p in model.parameters())
    model.train()
    loss = model(**inputs_for(model), labels=torch.tensor([0, 1])).loss
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "encoder" in n)


def test_a_slim_model_can_be_pruned_again():
    model = build("electra", eb.slim.AUTO_CLASSES[2])  # masked LM
    batch = inputs_for(model)
    eb.prune(model, hand_ticket(model, head_count=1, ffn_ratio=0.2))
    second = hand_ticket(model, seed=3, head_count=1, ffn_ratio=0.3)
    reference = masked_reference(model, second, batch)
    eb.prune(model, second)
    assert layer_shapes(model) == ([2, 2], second.kept_ffn)
    assert max_diff(outputs(model, batch), reference) < 1e-5


def test_prune_rejects_mismatched_ticket_and_gated_model():
    model = build("bert", eb.slim.AUTO_CLASSES[0])
    wrong = eb.full_ticket([4, 4, 4], [37, 37, 37])
    with pytest.raises(ValueError, match=r"drawn for a model with heads \[4, 4, 4\]"):
        eb.prune(model, wrong)
    narrow = eb.full_ticket([4, 4], [30, 37])
    with pytest.raises(ValueError, match="but this model has heads"):
        eb.prune(model, narrow)
    eb.add_gates(model)
    with pytest.raises(ValueError, match="remove the gates"):
        eb.prune(model, eb.full_ticket([4, 4], [37, 37]))
