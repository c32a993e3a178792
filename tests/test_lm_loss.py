import math

import pytest
import torch
import torch.nn.functional as F

import lm_loss
from model import GPT, GPTConfig

EPS32 = torch.finfo(torch.float32).eps
EPS_BF16 = torch.finfo(torch.bfloat16).eps  # 2^-7: the spacing of bf16 numbers just above 1


def problem(n=300, width=64, vocab=517, seed=0):
    """Hidden states, an output weight and targets with every 7th ignored; n is not a multiple of the chunk."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, width, generator=g, dtype=torch.float64)
    w = torch.randn(vocab, width, generator=g, dtype=torch.float64) * 0.2
    targets = torch.randint(0, vocab, (n,), generator=g)
    targets[::7] = -1
    return h, w, targets


def loss_and_grads(fn, h, w, targets, dtype=torch.float32, autocast=False):
    """fn's loss and its gradients in h and w, for an incoming gradient of 3 (as a scaled loss would give)."""
    h = h.detach().to(dtype).requires_grad_()
    w = w.detach().to(dtype).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = fn(h, w, targets)
    (3 * loss).backward()
    return loss.double(), h.grad.double(), w.grad.double()


def plain(softcap):
    def fn(h, w, targets):
        logits = F.linear(h, w)
        if softcap:
            logits = softcap * torch.tanh(logits / softcap)
        return F.cross_entropy(logits, targets, ignore_index=-1)
    return fn


def chunked(softcap):
    return lambda h, w, targets: lm_loss.cross_entropy(h, w, targets, softcap)


@pytest.mark.parametrize("softcap", [0.0, 5.0])
def test_chunked_loss_and_gradients_equal_the_plain_ones_in_float32(softcap):
    h, w, targets = problem()
    assert h.size(0) % lm_loss.chunk_rows(h.size(1))  # the last chunk is a partial one
    ref = loss_and_grads(plain(softcap), h, w, targets, torch.float64)
    got = loss_and_grads(chunked(softcap), h, w, targets)
    # float32 sums of up to vocab (517) terms: relative errors of a few eps * sqrt(terms), far under 1e-4
    tol = 8 * EPS32 * math.sqrt(517)
    assert got[0].item() == pytest.approx(ref[0].item(), rel=tol)
    for a, b in zip(got[1:], ref[1:]):
        assert (a - b).abs().max() <= tol * b.abs().max()


def test_chunked_loss_under_bf16_autocast_is_as_close_to_exact_as_the_plain_path():
    h, w, targets = problem()
    exact = loss_and_grads(plain(0.0), h, w, targets, torch.float64)
    ours = loss_and_grads(chunked(0.0), h, w, targets, autocast=True)
    theirs = loss_and_grads(plain(0.0), h, w, targets, autocast=True)
    for a, b, e in zip(ours, theirs, exact):
        # both round the matrix products' inputs and outputs to bf16: a few bf16 spacings of the largest value
        scale = e.abs().max()
        assert (a - e).abs().max() <= 4 * EPS_BF16 * scale
        assert (b - e).abs().max() <= 4 * EPS_BF16 * scale


def test_every_target_ignored_gives_nan_like_cross_entropy():
    h, w, targets = problem(n=10)
    targets[:] = -1
    assert math.isnan(lm_loss.cross_entropy(h.float(), w.float(), targets).item())
    assert math.isnan(F.cross_entropy(F.linear(h, w), targets, ignore_index=-1).item())


def peaked_teacher(x: torch.Tensor) -> lm_loss.Teacher:
    """A teacher for batch x (distillation): another width, 320 rows of output layer cut to 300 (as a padded
    vocabulary is), scaled so that its distributions are far from a newly initialised student's."""
    torch.manual_seed(5)
    model = GPT(GPTConfig(vocab_size=320, block_size=32, n_layer=1, n_head=2, n_embed=48, dropout=0.0)).eval()
    with torch.no_grad():
        hidden = model.hidden(x).flatten(0, 1)  # (B * T, 48)
    return lm_loss.Teacher(hidden, 30 * model.lm_head.weight[:300], 0.0, 0.5)


@pytest.mark.parametrize("distil", [False, True])
@pytest.mark.parametrize("layout", [dict(), dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", bias=False,
                                                   tie_embeddings=False, logit_softcap=10.0)])
def test_training_the_model_through_chunks_gives_the_plain_loss_and_gradients(layout, distil):
    config = GPTConfig(vocab_size=300, block_size=16, n_layer=2, n_head=2, n_embed=32, dropout=0.0, **layout)
    x = torch.randint(0, 300, (4, 16), generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 300, (4, 16), generator=torch.Generator().manual_seed(2))
    teacher = peaked_teacher(x) if distil else None
    results = []
    for chunked_loss in (True, False):
        torch.manual_seed(0)
        model = GPT(config).train()
        model.chunked_loss = chunked_loss
        logits, loss = model(x, y, teacher=teacher)
        assert (logits is None) == chunked_loss  # the chunked path never forms the logits
        loss.backward()
        results.append((loss, {n: p.grad for n, p in model.named_parameters()}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert loss_a.item() == pytest.approx(loss_b.item(), rel=1e-5)
    for name, g in grads_b.items():
        assert (grads_a[name] - g).abs().max() <= 1e-4 * g.abs().max(), name
    if distil:  # the teacher's distributions are other targets: other gradients than the text's alone
        model.zero_grad()
        model(x, y)[1].backward()
        first = model.transformer.h[0].mlp.c_fc.weight.grad
        assert (first - grads_b["transformer.h.0.mlp.c_fc.weight"]).abs().max() > 0.1 * first.abs().max()
    with torch.no_grad():  # evaluation still gets logits
        logits, _ = model(x, y)
    assert logits.shape == (4, 16, 300)
