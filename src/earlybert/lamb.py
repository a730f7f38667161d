"""LAMB: layer-wise adaptive large-batch optimisation (You et al., ICLR 2020, Algorithm 2).

Written here because the maintained implementations do not match the paper's algorithm: pytorch_optimizer's
Lamb leaves the second moment without bias correction, which inflates the Adam direction against the weight
decay inside the trust ratio by up to 1 / sqrt(1 - beta2^t) (31x at step 1, still 1.6x after 1,000 steps with
beta2 = 0.999); timm's needs torchvision, which does not install beside this torch. Tested against a direct
transcription of Algorithm 2 (tests/test_pretrain.py).

As in BERT's LAMB recipes (Google's lamb_optimizer excludes the no-decay parameters from layer adaptation;
NVIDIA's FusedLAMB does by default), a parameter group can turn the trust ratio off (`layer_adaptation=False`):
biases, LayerNorm and EarlyBERT's gates then take plain Adam steps, which keeps the gates' update tied to their
own gradients rather than rescaled per layer.
"""

from __future__ import annotations

import torch


class Lamb(torch.optim.Optimizer):
    """Per parameter tensor ("layer"):
        m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
        r = m_hat / (sqrt(v_hat) + eps) + weight_decay * p
        p -= lr * phi(||p||) / ||r|| * r,   phi(z) = min(z, max_trust_norm); ratio 1 where a norm is 0
    (ratio 1 throughout in groups with layer_adaptation=False)
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.01, max_trust_norm: float = 10.0, layer_adaptation: bool = True):
        if lr <= 0:
            raise ValueError(f"LAMB learning rate must be > 0, got {lr}")
        if not all(0 <= b < 1 for b in betas):
            raise ValueError(f"LAMB betas must be in [0, 1), got {betas}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      max_trust_norm=max_trust_norm, layer_adaptation=layer_adaptation))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                m, v, t = state["exp_avg"], state["exp_avg_sq"], state["step"]
                grad = p.grad.float() if p.dtype != torch.float32 else p.grad
                m.lerp_(grad.to(m.dtype), 1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                update = (m / (1 - beta1**t)) / ((v / (1 - beta2**t)).sqrt_().add_(group["eps"]))
                if group["weight_decay"]:
                    update.add_(p, alpha=group["weight_decay"])
                if group["layer_adaptation"]:
                    weight_norm = p.norm().clamp_(max=group["max_trust_norm"])
                    update_norm = update.norm()
                    ratio = torch.where((weight_norm > 0) & (update_norm > 0), weight_norm / update_norm,
                                        torch.ones_like(weight_norm))
                    update.mul_(ratio)
                p.sub_(update.mul_(group["lr"]).to(p.dtype))
        return loss
