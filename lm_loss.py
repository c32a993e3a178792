"""The training loss of the output layer, computed in chunks of rows so that the logits never exist whole.

On a CPU the output layer and its cross-entropy dominate a small model's training step. With 8192
tokens and width 128 (the preset as it was), one batch has (2048, 8192) logits: the plain path writes them in
bf16, copies them to float32, takes the log-softmax, fills a gradient of the same size and casts it
back, each pass a trip through main memory (64 MB in float32). That was ~120 of a step's ~200 ms
(bench/step_time.py). Here each chunk of rows goes through the same arithmetic while its logits are
still in cache, and the gradients of the hidden states and of the weight are computed right away, in
the forward pass (the idea of Liger-Kernel's fused linear cross-entropy, Hsu et al. 2024): the
backward pass only scales them by the incoming gradient. Loss and gradients are those of
F.cross_entropy(F.linear(h, weight), targets, ignore_index=-1), up to rounding.

With a teacher (train_bpe.py --distill_from) the targets are soft: a share of each row's target is the
teacher's next-token distribution, computed here chunk by chunk from its final hidden states, so that the
teacher's logits never exist whole either.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F


def chunk_rows(width: int) -> int:
    """Rows per chunk. Every chunk also adds its (vocab, width) share to the weight's gradient, so a chunk
    should have about as many rows as the width for that to stay small; 128 rows per 96 of width was
    about fastest for widths 128, 384 and 768 on a 2-core CPU (vocabularies 8000 to 50304; the table is
    in bench/RESULTS.md, "The loss in chunks")."""
    return 128 * math.ceil(width / 96)


class Teacher(NamedTuple):
    """What distillation needs of a teacher for a batch: its final hidden states (N, C') and output weight
    (vocab, C'), its soft cap (0: none), and the share of each target that its distribution is."""

    hidden: torch.Tensor
    head: torch.Tensor
    softcap: float
    share: float


def cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, softcap: float = 0.0,
                  teacher: Teacher | None = None) -> torch.Tensor:
    """Mean cross-entropy of logits h @ weight.T (optionally soft-capped: cap * tanh(logits / cap)) against
    targets; targets of -1 are ignored. h: (N, C), weight: (vocab, C), targets: (N,). Differentiable in h and
    weight; under autocast the matrix products run in the autocast dtype, as F.linear's would. With a teacher,
    each row's target is (1 - share) x its one-hot target + share x the teacher's distribution, as
    distilled_cross_entropy computes from whole logits."""
    return ChunkedCrossEntropy.apply(h, weight, targets, softcap, teacher)


def capped(logits: torch.Tensor, softcap: float) -> torch.Tensor:
    """Logits soft-capped at +-softcap (softcap * tanh(logits / softcap)); unchanged for softcap 0."""
    return softcap * torch.tanh(logits / softcap) if softcap else logits


def distilled_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, teacher_logits: torch.Tensor,
                            share: float) -> torch.Tensor:
    """The loss of cross_entropy with a teacher, from whole (N, vocab) logits: the mean over rows whose target
    is not -1 of (1 - share) x the targets' cross-entropy + share x the cross-entropy of the teacher's softmax."""
    keep = targets != -1
    dtype = torch.promote_types(logits.dtype, torch.float32)  # bf16 logits are summed in float32
    hard = F.cross_entropy(logits.to(dtype), targets, ignore_index=-1, reduction="none")  # 0 where ignored
    soft = -(teacher_logits.to(dtype).softmax(-1) * logits.to(dtype).log_softmax(-1)).sum(-1)
    return (((1 - share) * hard + share * soft) * keep).sum() / keep.sum()


class ChunkedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, softcap, teacher):
        device = h.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else h.dtype
        with torch.autocast(device, enabled=False):
            loss_sum, grad_h, grad_w = loss_and_grads(h.to(dtype), weight.to(dtype), targets, softcap, teacher)
        count = (targets != -1).sum()
        ctx.save_for_backward(grad_h, grad_w, count)
        ctx.dtypes = h.dtype, weight.dtype
        return loss_sum / count  # 0 / 0 = nan when every target is ignored, as F.cross_entropy gives

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w, count = ctx.saved_tensors
        scale = grad_loss / count
        h_dtype, w_dtype = ctx.dtypes
        return (grad_h * scale).to(h_dtype), (grad_w * scale).to(w_dtype), None, None, None


def loss_and_grads(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, softcap: float,
                   teacher: Teacher | None = None):
    """(summed loss, d loss_sum / d h, d loss_sum / d weight) with h and weight already in the compute dtype.
    Losses and softmax are float32; the weight's gradient is summed over chunks in float32."""
    share = teacher.share if teacher is not None else 0.0
    teacher_head = teacher.head.to(h.dtype) if teacher is not None else None
    grad_h = torch.empty_like(h)
    grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=h.device)
    loss_sum = torch.zeros((), dtype=torch.float32, device=h.device)
    rows = chunk_rows(h.size(1))
    for start in range(0, h.size(0), rows):
        hc, tc = h[start : start + rows], targets[start : start + rows]  # (n, C), (n,)
        logits = (hc @ weight.t()).float()  # (n, vocab)
        if softcap:
            squashed = torch.tanh(logits / softcap)
            logits = softcap * squashed
        keep = (tc != -1)[:, None]  # (n, 1)
        safe = tc.clamp(min=0)[:, None]  # an ignored row's target is any valid index; keep zeroes it out
        target_logits = logits.gather(1, safe)  # (n, 1)
        if teacher is not None:  # the teacher's distribution and the logits' mean under it
            taught = capped((teacher.hidden[start : start + rows].to(h.dtype) @ teacher_head.t()).float(),
                            teacher.softcap).softmax(dim=-1)  # (n, vocab)
            target_logits = (1 - share) * target_logits + share * torch.linalg.vecdot(taught, logits)[:, None]
        # The softmax in place of the logits, with one exponential per logit (logsumexp and then a softmax
        # take two, and one more pass: 0.74 against 1.23 ms for (256, 4096) float32 logits on a 2-core CPU)
        most = logits.amax(dim=-1, keepdim=True)  # (n, 1)
        grad = logits.sub_(most).exp_()
        total = grad.sum(dim=-1, keepdim=True)  # (n, 1)
        loss_sum += ((most + total.log() - target_logits) * keep).sum()  # log-sum-exp minus the target's logit
        grad.div_(total)
        grad.scatter_add_(1, safe, torch.full_like(total, share - 1.0))  # minus the target
        if teacher is not None:
            grad.sub_(taught, alpha=share)
        grad.mul_(keep)
        if softcap:
            grad.mul_(1 - squashed.square())  # through cap * tanh(z / cap)
        grad = grad.to(h.dtype)
        torch.mm(grad, weight, out=grad_h[start : start + rows])
        if grad.dtype == torch.float32:
            grad_w.addmm_(grad.t(), hc)
        else:  # a bf16 product, summed in float32
            grad_w += grad.t() @ hc
    return loss_sum, grad_h, grad_w
