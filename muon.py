"""Muon for the hidden weight matrices, AdamW for everything else, in one optimizer.

Muon (Keller Jordan, "Muon: An optimizer for hidden layers in neural networks", 2024; used in the
modded-nanogpt speedruns and in nanochat) takes SGD-momentum's update for a 2-D weight and replaces
it by the nearest semi-orthogonal matrix, computed with a few Newton-Schulz iterations. Every
direction of the update then moves at the same rate, which the write-up reports needs markedly
fewer steps than AdamW for the same loss. Embeddings, the (tied) output layer, biases and LayerNorm
gains are not hidden matrices and stay on AdamW, as the write-up recommends.

The training loop sets one ``lr`` on every group from the schedule; a Muon group multiplies it by
its ``lr_scale`` (muon_lr / lr), so the schedule shapes both optimizers alike.
"""

from __future__ import annotations

import math

import torch

# Quintic Newton-Schulz coefficients from the Muon write-up: chosen to push singular values into
# roughly [0.7, 1.2] within five steps, rather than converge exactly (which would need many more).
NS_COEFFS = (3.4445, -4.7750, 2.0315)


def orthogonalize(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """An approximately semi-orthogonal matrix with g's singular vectors (U V^T of g's SVD).

    g may be a stack (..., rows, cols) of matrices of one shape: each is orthogonalised on its own, in
    the same batched products."""
    a, b, c = NS_COEFFS
    x = g.float()
    transposed = x.size(-2) > x.size(-1)
    if transposed:  # iterate on the short side: X X^T is then the small Gram matrix
        x = x.mT
    # Frobenius norm >= spectral norm, so singular values start in [0, 1]
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + eps)
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.mT if transposed else x).to(g.dtype)


class MuonAdamW(torch.optim.Optimizer):
    """Groups with ``muon=True`` take Muon steps; the others take AdamW steps.

    Muon group keys: lr_scale, momentum, nesterov, weight_decay, ns_steps.
    AdamW group keys: betas, eps, weight_decay.
    """

    def __init__(self, param_groups, lr: float):
        defaults = dict(lr=lr, muon=False, lr_scale=1.0, momentum=0.95, nesterov=True, ns_steps=5,
                        betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
        super().__init__(param_groups, defaults)
        for group in self.param_groups:
            if group["muon"] and any(p.dim() != 2 for p in group["params"]):
                raise ValueError("Muon groups must hold 2-D weight matrices only")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["muon"]:
                self._muon_step(group)
            else:
                self._adamw_step(group)
        return loss

    def _muon_step(self, group) -> None:
        lr, mu = group["lr"] * group["lr_scale"], group["momentum"]
        updates: dict[torch.Size, list[tuple[torch.Tensor, torch.Tensor]]] = {}  # shape -> [(param, update)]
        for p in group["params"]:
            if p.grad is None:
                continue
            buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
            buf.mul_(mu).add_(p.grad)
            update = p.grad.add(buf, alpha=mu) if group["nesterov"] else buf
            updates.setdefault(p.shape, []).append((p, update))
        # Matrices of one shape (the same weight of every block) are orthogonalised together: a few batched
        # products instead of many small ones, whose fixed costs dominated on a CPU: the preset's 16 matrices
        # took 17 ms instead of 36, timed alone (bench/RESULTS.md, "Quality per second XIII").
        for same_shape in updates.values():
            params, stacked = zip(*same_shape)
            for p, update in zip(params, orthogonalize(torch.stack(stacked), group["ns_steps"])):
                # Tall matrices get larger steps so every layer's update has a similar RMS per element,
                # the scaling of the write-up's reference: sqrt(max(1, rows / cols)).
                scale = math.sqrt(max(1.0, p.size(0) / p.size(1)))
                # Decoupled decay at the schedule's base rate, so --weight_decay means the same as with AdamW.
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-lr * scale)

    def _adamw_step(self, group) -> None:
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            t = state["step"].item()
            state["exp_avg"].lerp_(p.grad, 1 - beta1)
            state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            denom = (state["exp_avg_sq"] / (1 - beta2**t)).sqrt_().add_(eps)
            p.mul_(1 - lr * group["weight_decay"])
            p.addcdiv_(state["exp_avg"], denom, value=-lr / (1 - beta1**t))


def hidden_matrices(model: torch.nn.Module) -> set[str]:
    """Names of the 2-D weights inside the Transformer blocks: the matrices Muon is meant for."""
    return {name for name, p in model.named_parameters() if p.dim() == 2 and ".h." in f".{name}"}
