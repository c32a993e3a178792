"""Quality levers: --optimizer muon (orthogonalised updates for hidden matrices) and --cpu_bf16."""

import math

import pytest
import torch

import muon
import train_bpe
from checkpoint import load_checkpoint
from conftest import TINY_MODEL_ARGS
from model import GPT, GPTConfig


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


def test_muon_trains_every_parameter_and_overfits_one_batch():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embed=32, dropout=0.0))
    opt = train_bpe.make_optimizer(model, 3e-3, 0.0, "cpu", "muon", muon_lr=0.02)
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
    state = load_checkpoint(tmp_path / train_bpe.LAST_NAME)
    fresh = GPT(GPTConfig(**state["config"]))
    assert set(state["model"]) == set(fresh.state_dict())  # same parameter names as an AdamW run


def test_cpu_bf16_only_where_the_cpu_has_bf16_matmuls():
    assert train_bpe.amp_dtype("cpu", bf16_supported=True, cpu_bf16=True) == torch.bfloat16
    assert train_bpe.amp_dtype("cpu", bf16_supported=False, cpu_bf16=True) is None  # emulated bf16 is slow
    assert train_bpe.amp_dtype("cpu", bf16_supported=True, enabled=False, cpu_bf16=True) is None
    assert train_bpe.amp_dtype("cuda", bf16_supported=True, cpu_bf16=True) == torch.bfloat16


def test_cpu_bf16_run_keeps_fp32_weights(tiny_file, tmp_path):
    code = train_bpe.main([
        "--data_file", str(tiny_file), "--tokenizer_path", str(tmp_path / "tok.json"), "--out_dir", str(tmp_path),
        *TINY_MODEL_ARGS, "--max_steps", "4", "--eval_interval", "4", "--eval_iters", "2", "--warmup_steps", "1",
        "--cpu_bf16",
    ])
    assert code == 0
    state = load_checkpoint(tmp_path / train_bpe.BEST_NAME)
    assert all(t.dtype == torch.float32 for t in state["model"].values())  # autocast, not a bf16 model
    assert math.isfinite(state["best_val_loss"])
