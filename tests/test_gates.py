import pytest
import torch

import earlybert as eb
from earlybert.archs import blocks, get_arch
from earlybert.gates import penalize

from conftest import FAMILY_HEADS, build, inputs_for, max_diff, outputs


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("family,auto", FAMILY_HEADS)
def test_gates_at_one_leave_outputs_unchanged(family, auto, attn):
    model = build(family, auto, attn)
    batch = inputs_for(model)
    before = outputs(model, batch)
    gates = eb.add_gates(model)
    assert all(torch.all(g == 1) for g in gates.parameters())
    assert max_diff(outputs(model, batch), before) < 1e-6


@pytest.mark.parametrize("family,auto", FAMILY_HEADS)
def test_remove_gates_restores_model_bit_identically(family, auto):
    model = build(family, auto)
    batch = inputs_for(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    before = outputs(model, batch)
    gates = eb.add_gates(model)
    with torch.no_grad():
        for g in gates.parameters():
            g.uniform_(-2, 2)
    assert max_diff(outputs(model, batch), before) > 1e-6  # the gates really act
    eb.remove_gates(model)
    after_state = model.state_dict()
    assert list(after_state) == list(state)
    assert all(torch.equal(after_state[k], state[k]) for k in state)
    assert all(torch.equal(x, y) for x, y in zip(outputs(model, batch), before))
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())
    assert not hasattr(model, "earlybert_gates")


def test_gate_parameters_are_model_parameters_and_learn():
    model = build("bert", eb.slim.AUTO_CLASSES[4])  # sequence classification
    gates = eb.add_gates(model)
    names = [n for n, _ in model.named_parameters()]
    assert "earlybert_gates.head.0" in names and "earlybert_gates.ffn.1" in names
    assert [len(g) for g in gates.head] == [4, 4] and [len(g) for g in gates.ffn] == [37, 37]
    model.train()
    out = model(**inputs_for(model), labels=torch.tensor([0, 1]))
    (out.loss + eb.sparsity_penalty(model)).backward()
    assert all(g.grad is not None and g.grad.abs().sum() > 0 for g in gates.parameters())


def test_sparsity_penalty_is_weighted_l1():
    model = build("bert", eb.slim.AUTO_CLASSES[0])
    gates = eb.add_gates(model)
    with torch.no_grad():
        gates.head[0][0] = -3.0  # magnitude counts, not sign
    head_l1 = 2 * 4 - 1 + 3
    ffn_l1 = 2 * 37
    assert eb.sparsity_penalty(model).item() == pytest.approx(1e-4 * (head_l1 + ffn_l1))
    config = eb.GateConfig(head_l1=1e-2, ffn_l1=0.0)
    assert eb.sparsity_penalty(gates, config).item() == pytest.approx(1e-2 * head_l1)


def test_gates_follow_a_low_precision_model():
    model = build("bert", eb.slim.AUTO_CLASSES[0]).to(torch.bfloat16)
    eb.add_gates(model)
    out = model(**inputs_for(model)).last_hidden_state
    assert out.dtype == torch.bfloat16


@pytest.mark.parametrize("family,auto", [p for p in FAMILY_HEADS if "Base" in p.id or "Masked" in p.id])
def test_fold_keeps_gated_function(family, auto):
    model = build(family, auto)
    batch = inputs_for(model)
    gates = eb.add_gates(model)
    with torch.no_grad():
        for g in gates.parameters():
            g.uniform_(-2, 2)
    gated = outputs(model, batch)
    eb.remove_gates(model, fold=True)
    assert max_diff(outputs(model, batch), gated) < 1e-5


def test_gate_misuse_is_reported():
    model = build("bert", eb.slim.AUTO_CLASSES[0])
    with pytest.raises(ValueError, match="no earlybert gates"):
        eb.remove_gates(model)
    eb.add_gates(model)
    with pytest.raises(ValueError, match="already has earlybert gates"):
        eb.add_gates(model)
    with pytest.raises(ValueError, match="head_l1"):
        eb.GateConfig(head_l1=-1)


def test_unsupported_architecture_names_the_supported_ones():
    from transformers import GPT2Config, GPT2Model

    model = GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(TypeError, match="bert, distilbert, electra, roberta"):
        eb.add_gates(model)
    with pytest.raises(TypeError, match="not support model type 'gpt2'"):
        get_arch(model)
    assert len(blocks(build("distilbert", eb.slim.AUTO_CLASSES[0]))) == 2


def test_a_deep_copy_of_a_gated_model_uses_its_own_gates():
    import copy

    model = build("bert", eb.slim.AUTO_CLASSES[0])
    batch = inputs_for(model)
    eb.add_gates(model)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for g in eb.get_gates(twin).parameters():
            g.zero_()
    assert max_diff(outputs(model, batch), outputs(twin, batch)) > 1e-3  # zeroing the twin's gates acts on the twin only
    eb.remove_gates(twin)
    assert not any(m._forward_pre_hooks for m in twin.modules())
    assert any(m._forward_pre_hooks for m in model.modules())


def test_the_penalty_is_not_shrunk_by_a_loss_scaler_that_leaves_unscaling_to_a_fused_step():
    # fp16 without clipping: the scaler hands a fused optimizer still-scaled gradients and the scale, and the step
    # unscales them, the penalty's share included. The gates must end where they would without a scaler.
    def gates_after_one_step(scaler):
        model = build("bert", eb.slim.AUTO_CLASSES[4])
        gates = eb.add_gates(model)
        model.train()
        optimizer = penalize(torch.optim.AdamW(gates.parameters(), lr=1e-2, fused=True), gates,
                                eb.GateConfig(head_l1=1e-2, ffn_l1=1e-2))
        torch.manual_seed(3)  # the same dropout in both runs
        loss = model(**inputs_for(model), labels=torch.tensor([0, 1])).loss
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
        return torch.cat([g.detach().clone() for g in gates.parameters()])

    plain = gates_after_one_step(None)
    scaled = gates_after_one_step(torch.amp.GradScaler("cpu", init_scale=2.0**16))
    assert torch.allclose(scaled, plain, atol=1e-6)
