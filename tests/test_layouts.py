"""GPTConfig's layout options (rotary positions, RMSNorm, QK-norm, SwiGLU, untied head, ...): the KV cache
stays exact, rotary positions are relative, old configs stay GPT-2, and the Llama/Qwen3 layouts compute
what Hugging Face's LlamaForCausalLM / Qwen3ForCausalLM compute on the same weights."""

import dataclasses

import pytest
import torch

import export_hf
from checkpoint import model_config
from model import GPT, GPTConfig, KVCache, RMSNorm, rope_tables, rotate

SIZES = dict(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embed=32, dropout=0.0)
LLAMA = dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", bias=False)
LAYOUTS = {
    "gpt2": {},
    "rope": dict(pos_emb="rope"),
    "llama": LLAMA,
    "qwen3": {**LLAMA, "qk_norm": True},
    "qwen3-untied": {**LLAMA, "qk_norm": True, "tie_embeddings": False},
    "relu2-softcap-zero": dict(mlp="relu2", logit_softcap=15.0, zero_init_proj=True),
}


def make_model(layout: dict, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**SIZES, **layout)).eval()
    with torch.no_grad():  # zero-initialised projections would hide mistakes behind zeros: perturb everything
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_cached_generation_equals_recomputing_every_step(name):
    """25 new tokens after a 5-token prompt cross the 16-token block: prefill, one-token steps with the
    rotary offset, and a context shift. The cache must reproduce the full recompute at every step."""
    model = make_model(LAYOUTS[name])
    prompt = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(1))
    cached = torch.stack(list(model.generate(prompt, 25, temperature=0)))
    recomputed = torch.stack(list(model.generate(prompt, 25, temperature=0, use_cache=False)))
    assert torch.equal(cached, recomputed)


@pytest.mark.parametrize("name", ["rope", "qwen3"])
def test_one_token_steps_give_the_logits_of_the_whole_sequence(name):
    """The logits of token t fed alone after t cached tokens equal those of position t in one forward pass:
    the rotation uses the cache's offset, not position 0."""
    model = make_model(LAYOUTS[name])
    idx = torch.randint(0, 64, (1, 12), generator=torch.Generator().manual_seed(2))
    full, _ = model(idx)
    cache = KVCache(model.config, 1, "cpu", torch.float32)
    steps = [model(idx[:, :4], cache=cache)[0]] + [model(idx[:, t : t + 1], cache=cache)[0] for t in range(4, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_decode_gives_the_logits_of_forward(name):
    """GPT.decode, which generate() runs every step through, is forward without the module machinery: a prefill
    and then one token at a time give, at every position, the logits of one forward pass over the sequence.
    It computes as in eval mode even on a model left in training mode with dropout."""
    model = GPT(GPTConfig(**{**SIZES, "dropout": 0.3}, **LAYOUTS[name]))
    model.load_state_dict(make_model(LAYOUTS[name]).state_dict())
    idx = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full, _ = model.eval()(idx)
        model.train()
        cache = KVCache(model.config, 2, "cpu", torch.float32)
        steps = [model.decode(idx[:, :4], cache)] + [model.decode(idx[:, t : t + 1], cache) for t in range(4, 12)]
    # the same operations on the same numbers: equal but for summation orders of one-row products
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.pos == 12


def test_rotary_attention_scores_depend_only_on_the_distance():
    cfg = GPTConfig(**{**SIZES, "block_size": 64}, pos_emb="rope")
    cos, sin = rope_tables(cfg)
    gen = torch.Generator().manual_seed(3)
    q, k = torch.randn(1, 1, 1, 16, generator=gen), torch.randn(1, 1, 1, 16, generator=gen)

    def score(m, n):
        return (rotate(q, cos[m : m + 1], sin[m : m + 1]) * rotate(k, cos[n : n + 1], sin[n : n + 1])).sum()

    torch.testing.assert_close(score(9, 2), score(40, 33))  # both 7 apart
    torch.testing.assert_close(score(5, 5), (q * k).sum())  # no distance: no rotation at all
    assert not torch.isclose(score(9, 2), score(9, 3))
    # A rotation keeps lengths.
    torch.testing.assert_close(rotate(q, cos[20:21], sin[20:21]).norm(), q.norm())


def test_rotation_is_the_textbook_pairwise_rotation():
    cfg = GPTConfig(**{**SIZES, "block_size": 64}, pos_emb="rope")
    cos, sin = rope_tables(cfg)  # (64, 16) each
    x = torch.randn(2, 3, 64, 16, generator=torch.Generator().manual_seed(4))
    x1, x2 = x.chunk(2, dim=-1)
    angle_cos, angle_sin = cos[:, :8], sin[:, 8:]  # each pair's cos and sin
    textbook = torch.cat([x1 * angle_cos - x2 * angle_sin, x2 * angle_cos + x1 * angle_sin], dim=-1)
    # The same products and sums, one of them of a negated operand: equal to the last bit.
    assert torch.equal(rotate(x, cos, sin), textbook)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rmsnorm_computes_what_torchs_rmsnorm_computes(dtype):
    ours, torchs = RMSNorm(48, eps=1e-5), torch.nn.RMSNorm(48, eps=1e-5)
    with torch.no_grad():
        ours.weight.normal_(generator=torch.Generator().manual_seed(1))
        torchs.weight.copy_(ours.weight)
    ours, torchs = ours.to(dtype), torchs.to(dtype)  # a model converted as a whole, as sampling in bf16 does
    x = (3 * torch.randn(4, 7, 48, generator=torch.Generator().manual_seed(2))).to(dtype)
    a, b = ours(x), torchs(x)
    assert a.dtype == b.dtype
    # One rounding to the input's type at most apart (torch's kernel may round at another step).
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(a.float(), b.float(), rtol=2 * eps, atol=2 * eps * b.float().abs().max().item())
    assert ours.state_dict().keys() == torchs.state_dict().keys()


@pytest.mark.parametrize("attn_dropout, expected", [(None, 0.2), (0.0, 0.0), (0.1, 0.1)])
def test_attention_dropout_defaults_to_dropout_and_can_differ(monkeypatch, attn_dropout, expected):
    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **kw: seen.append(kw["dropout_p"]) or sdpa(*a, **kw))
    model = GPT(GPTConfig(**{**SIZES, "dropout": 0.2, "attn_dropout": attn_dropout}))
    model(torch.zeros(1, 8, dtype=torch.long))
    model.eval()(torch.zeros(1, 8, dtype=torch.long))
    assert seen == [expected] * 2 + [0.0] * 2  # two layers in training, then two at evaluation
    with pytest.raises(ValueError, match="attn_dropout"):
        GPTConfig(**{**SIZES, "attn_dropout": 1.0}).check()


def test_configs_saved_before_the_layout_fields_build_gpt2():
    old = {"vocab_size": 64, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embed": 32, "dropout": 0.0,
           "bias": True}
    cfg = model_config(old)
    assert (cfg.pos_emb, cfg.norm, cfg.mlp, cfg.qk_norm, cfg.tie_embeddings) == ("learned", "layernorm", "gelu",
                                                                                  False, True)
    model = GPT(cfg)
    names = set(model.state_dict())
    assert "transformer.wpe.weight" in names and "transformer.h.0.ln_1.bias" in names
    assert model.lm_head.weight is model.transformer.wte.weight


def test_layout_options_shape_the_model():
    llama = GPT(GPTConfig(**SIZES, **LLAMA, qk_norm=True, tie_embeddings=False))
    names = set(llama.state_dict())
    assert "transformer.wpe.weight" not in names  # rotary: no position table
    assert not any(n.endswith(".bias") for n in names)
    assert "transformer.h.0.attn.q_norm.weight" in names
    assert llama.lm_head.weight is not llama.transformer.wte.weight
    assert llama.transformer.h[0].mlp.c_fc.weight.shape == (2 * 96, 32)  # gate and up: 8/3 x 32 -> 96 each
    # SwiGLU's three matrices hold about what GELU's two do.
    gelu_mlp = sum(p.numel() for p in GPT(GPTConfig(**SIZES)).transformer.h[0].mlp.parameters())
    swiglu_mlp = sum(p.numel() for p in llama.transformer.h[0].mlp.parameters())
    assert 0.9 < swiglu_mlp / gelu_mlp < 1.15
    zero = GPT(GPTConfig(**SIZES, zero_init_proj=True))
    assert not zero.transformer.h[1].mlp.c_proj.weight.any() and not zero.transformer.h[1].attn.c_proj.weight.any()


@pytest.mark.parametrize("change", [dict(pos_emb="alibi"), dict(norm="batchnorm"), dict(mlp="tanh"),
                                    dict(qk_norm=1), dict(rope_theta=0.5), dict(logit_softcap=-1.0),
                                    dict(pos_emb="rope", n_head=32)])  # head size 1: odd
def test_check_refuses_layouts_that_describe_no_model(change):
    with pytest.raises(ValueError):
        dataclasses.replace(GPTConfig(**SIZES), **change).check()


@pytest.mark.parametrize("name, hf_class", [("llama", "LlamaForCausalLM"), ("qwen3", "Qwen3ForCausalLM"),
                                            ("qwen3-untied", "Qwen3ForCausalLM")])
def test_llama_layouts_match_hugging_face_on_the_same_weights(name, hf_class):
    transformers = pytest.importorskip("transformers", reason="the reference needs the transformers extra")
    model = make_model(LAYOUTS[name])
    config = dataclasses.asdict(model.config)
    hf_cfg = export_hf.hf_config(config, export_hf.tokenizer.SpecialIds(eos=3, bos=2, pad=0, unk=1))
    assert hf_cfg["architectures"] == [hf_class]
    hf_model = transformers.AutoModelForCausalLM.from_config(
        transformers.AutoConfig.for_model(**{k: v for k, v in hf_cfg.items() if k != "architectures"}))
    missing, unexpected = hf_model.load_state_dict(export_hf.hf_state_dict(model.state_dict(), config), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}  # the tied head is the embedding itself
    hf_model.eval()
    idx = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(hf_model(idx).logits, model(idx)[0], atol=1e-4, rtol=1e-4)
