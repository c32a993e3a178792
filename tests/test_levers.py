"""Quality levers: --optimizer muon (orthogonalised updates for hidden matrices), --cpu_bf16, --dropout_after and
--dropout_below."""

import math

import pytest
import torch

import cli
import metrics
import muon
import train_bpe
import trainer
from checkpoint import load_checkpoint
from model import GPT, GPTConfig

from helpers import TINY_MODEL_ARGS


@pytest.mark.parametrize("shape", [(64, 16), (16, 64), (96, 24)])
def test_orthogonalize_flattens_the_spectrum_and_keeps_the_directions(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    g[:, 0] *= 50  # a badly conditioned gradient: one direction dominates
    x = muon.orthogonalize(g)
    s = torch.linalg.svdvals(x)
    assert s.min() > 0.5 and s.max() < 1.3  # every direction moves at a similar rate
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    exact = u @ vh
    assert torch.nn.functional.cosine_similarity(x.flatten(), exact.flatten(), dim=0) > 0.9


@pytest.mark.parametrize("shape", [(24, 8), (8, 24)])
def test_orthogonalize_treats_each_matrix_of_a_stack_on_its_own(shape):
    gen = torch.Generator().manual_seed(0)
    stack = torch.randn(3, *shape, generator=gen) * torch.tensor([1e-3, 1.0, 1e3])[:, None, None]
    together = muon.orthogonalize(stack)
    for g, x in zip(stack, together):
        # The same products in another blocking: float32 rounding, grown by five iterations whose
        # coefficients are below 5 on entries below 1.
        torch.testing.assert_close(x, muon.orthogonalize(g), rtol=0, atol=1e-4)


def test_a_muon_step_updates_each_matrix_from_its_own_gradient():
    """Matrices of one shape share a batched orthogonalisation: each must still get its own update."""
    gen = torch.Generator().manual_seed(1)
    shapes = [(12, 4), (4, 4), (12, 4), (4, 12), (4, 4)]
    params = [torch.randn(s, generator=gen) for s in shapes]
    expected = [p.clone() for p in params]
    lr, muon_lr, mu, decay = 0.01, 0.02, 0.95, 0.1
    opt = muon.MuonAdamW([{"params": params, "muon": True, "lr_scale": muon_lr / lr, "weight_decay": decay}], lr=lr)
    buffers = [torch.zeros_like(p) for p in params]
    for _ in range(3):
        for p, e, buf in zip(params, expected, buffers):
            p.grad = torch.randn(p.shape, generator=gen)
            buf.mul_(mu).add_(p.grad)  # Nesterov momentum, then Muon's step for this one matrix
            update = muon.orthogonalize(p.grad + mu * buf)
            e.mul_(1 - lr * decay).sub_(muon_lr * math.sqrt(max(1.0, e.size(0) / e.size(1))) * update)
        opt.step()
    for p, e in zip(params, expected):
        torch.testing.assert_close(p, e, rtol=0, atol=1e-5)


def test_the_adamw_half_of_muon_matches_torch_adamw():
    """Embeddings, biases and gains take AdamW steps inside MuonAdamW: the same as torch.optim.AdamW's."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(16, 8), (8,), (5, 3)]
    ours = [torch.randn(s, generator=gen) for s in shapes]
    ref = [p.clone() for p in ours]
    groups = lambda ps: [{"params": ps[:1], "weight_decay": 0.1}, {"params": ps[1:], "weight_decay": 0.0}]  # noqa: E731
    opt = muon.MuonAdamW(groups(ours), lr=1e-2)
    torch_opt = torch.optim.AdamW(groups(ref), lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    steps = 6
    for step in range(steps):
        for group in opt.param_groups + torch_opt.param_groups:
            group["lr"] = 1e-2 * (1 - step / steps)  # a schedule, as the trainer sets it
        for a, b in zip(ours, ref):
            a.grad = torch.randn(a.shape, generator=gen) * 10 ** (step % 3 - 1)
            b.grad = a.grad.clone()
        opt.step()
        torch_opt.step()
    # The same arithmetic in another order: a few float32 ulps of |p| per step, where one step moves p by ~lr.
    for a, b in zip(ours, ref):
        tolerance = 4 * steps * torch.finfo(torch.float32).eps * b.abs().max().item()
        torch.testing.assert_close(a, b, rtol=0, atol=tolerance)


def test_muon_trains_every_parameter_and_overfits_one_batch():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embed=32, dropout=0.0))
    opt = trainer.make_optimizer(model, 3e-3, 0.0, "cpu", "muon", muon_lr=0.02)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = torch.randint(0, 64, (4, 16))
    first = None
    for _ in range(60):
        _, loss = model(x[:, :-1], x[:, 1:])
        first = first if first is not None else loss.item()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    assert loss.item() < 0.3 * first
    assert all(not torch.equal(before[n], p) for n, p in model.named_parameters())


def test_muon_run_checkpoints_and_keeps_the_gpt2_layout(tiny_file, tmp_path):
    code = train_bpe.main([
        "--data_file", str(tiny_file), "--tokenizer_path", str(tmp_path / "tok.json"), "--out_dir", str(tmp_path),
        *TINY_MODEL_ARGS, "--max_steps", "6", "--eval_interval", "6", "--eval_iters", "2", "--warmup_steps", "1", "--optimizer", "muon",
    ])
    assert code == 0
    state = load_checkpoint(tmp_path / trainer.LAST_NAME)
    fresh = GPT(GPTConfig(**state["config"]))
    assert set(state["model"]) == set(fresh.state_dict())  # same parameter names as an AdamW run


def test_cpu_bf16_only_where_the_cpu_has_bf16_matmuls():
    assert cli.amp_dtype("cpu", bf16_native=True, cpu_bf16=True) == torch.bfloat16
    assert cli.amp_dtype("cpu", bf16_native=False, cpu_bf16=True) is None  # emulated bf16 is slow
    assert cli.amp_dtype("cpu", bf16_native=True, enabled=False, cpu_bf16=True) is None
    assert cli.amp_dtype("cuda", bf16_native=True, cpu_bf16=True) == torch.bfloat16


def test_cpu_bf16_run_keeps_fp32_weights(tiny_file, tmp_path):
    code = train_bpe.main([
        "--data_file", str(tiny_file), "--tokenizer_path", str(tmp_path / "tok.json"), "--out_dir", str(tmp_path),
        *TINY_MODEL_ARGS, "--max_steps", "4", "--eval_interval", "4", "--eval_iters", "2", "--warmup_steps", "1",
        "--amp",  # after TINY_MODEL_ARGS' --no-amp: the last one wins
    ])
    assert code == 0
    state = load_checkpoint(tmp_path / trainer.BEST_NAME)
    assert all(t.dtype == torch.float32 for t in state["model"].values())  # autocast, not a bf16 model
    assert math.isfinite(state["best_val_loss"])


def dropout_after_run(tiny_file, tiny_tokenizer, out, *flags):
    """A run on the tiny corpus (30 steps are about one pass) that logs every step; its train records."""
    tok = out.parent / "tok.json"
    tok.write_text(tiny_tokenizer.to_str(), encoding="utf-8")
    assert train_bpe.main([*TINY_MODEL_ARGS, "--data_file", str(tiny_file), "--tokenizer", str(tok), "--lr", "3e-3",
                           "--eval_interval", "10", "--eval_iters", "1", "--log_interval", "1", "--out_dir", str(out),
                           *flags]) == 0
    return {r["step"]: r for r in metrics.read_metrics(out / metrics.METRICS_NAME) if r["kind"] == "train"}


def test_dropout_after_trains_without_dropout_for_that_many_passes(tiny_file, tiny_tokenizer, tmp_path, capsys):
    plain = dropout_after_run(tiny_file, tiny_tokenizer, tmp_path / "plain", "--max_steps", "30", "--dropout", "0")
    late = dropout_after_run(tiny_file, tiny_tokenizer, tmp_path / "late", "--max_steps", "30", "--dropout", "0.3",
                             "--dropout_after", "0.5")
    # Step s trains with dropout once the s - 1 steps before it have made half a pass.
    first = min(s for s in late if s > 1 and late[s - 1]["epoch"] >= 0.5)
    assert 3 < first < 30
    assert all(late[s]["loss"] == plain[s]["loss"] for s in range(1, first))  # no dropout drawn before
    assert late[first]["loss"] != plain[first]["loss"]
    out = capsys.readouterr().out
    assert out.count("dropout on from here (--dropout_after 0.5)") == 1 and f"at step {first - 1}:" in out
    assert load_checkpoint(tmp_path / "late" / trainer.LAST_NAME)["config"]["dropout"] == 0.3  # the config keeps it


def test_a_run_resumed_before_dropout_starts_ends_bitwise_equal(tiny_file, tiny_tokenizer, tmp_path):
    flags = ["--dropout", "0.3", "--dropout_after", "0.5"]
    dropout_after_run(tiny_file, tiny_tokenizer, tmp_path / "full", "--max_steps", "30", *flags)
    part = dropout_after_run(tiny_file, tiny_tokenizer, tmp_path / "part", "--max_steps", "5", *flags)
    assert part[5]["epoch"] < 0.5  # stopped before dropout started: the resumed process must start it
    assert train_bpe.main(["--resume", str(tmp_path / "part" / trainer.LAST_NAME), "--max_steps", "30"]) == 0
    full, resumed = (load_checkpoint(tmp_path / d / trainer.LAST_NAME) for d in ("full", "part"))
    assert full["step"] == resumed["step"] == 30
    for name, tensor in full["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name


def test_dropout_below_trains_a_corpus_large_for_the_model_without_dropout(tiny_file, tiny_tokenizer, tmp_path,
                                                                             capsys):
    """The tiny corpus has about 0.1 training tokens per parameter of the tiny model: --dropout_below 0.001 calls
    it large (no dropout, and one line saying so), 1000 small (the --dropout given)."""
    plain = dropout_after_run(tiny_file, tiny_tokenizer, tmp_path / "plain", "--max_steps", "8", "--dropout", "0")
    capsys.readouterr()
    large = dropout_after_run(tiny_file, tiny_tokenizer, tmp_path / "large", "--max_steps", "8", "--dropout", "0.3",
                              "--dropout_below", "0.001")
    [note] = [line for line in capsys.readouterr().out.splitlines() if "per parameter" in line]  # no small-corpus one
    small = dropout_after_run(tiny_file, tiny_tokenizer, tmp_path / "small", "--max_steps", "8", "--dropout", "0.3",
                              "--dropout_below", "1000")
    [small_note] = [line for line in capsys.readouterr().out.splitlines() if "per parameter" in line]
    assert "no dropout in this run" in note and "at least --dropout_below 0.001" in note
    assert "small corpus" in small_note  # below the line the corpus counts as small, and dropout stays
    assert [r["loss"] for r in large.values()] == [r["loss"] for r in plain.values()]  # trained as without dropout
    assert [r["loss"] for r in small.values()] != [r["loss"] for r in plain.values()]
    configs = {d: load_checkpoint(tmp_path / d / trainer.LAST_NAME)["config"] for d in ("large", "small")}
    assert configs["large"]["dropout"] == 0.0 and configs["small"]["dropout"] == 0.3  # what each run trained with

    # A resumed run keeps the dropout it started with, whatever --dropout_below the resume is given.
    assert train_bpe.main(["--resume", str(tmp_path / "small" / trainer.LAST_NAME), "--max_steps", "10",
                           "--dropout_below", "0.001"]) == 0
    assert "no dropout in this run" not in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "small" / trainer.LAST_NAME)["config"]["dropout"] == 0.3
