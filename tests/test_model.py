import pytest
import torch

import model as model_module
from model import GPT, GPTConfig, KVCache, sample_next, use_decode_layout

TINY = GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embed=32, dropout=0.0)


def make_model(seed=0, config=TINY):
    torch.manual_seed(seed)
    return GPT(config).eval()


def test_forward_shapes_and_loss_only_with_targets():
    model = make_model()
    idx = torch.randint(0, 64, (3, 10))
    logits, loss = model(idx)
    assert logits.shape == (3, 10, 64) and loss is None
    _, loss = model(idx, torch.randint(0, 64, (3, 10)))
    # A fresh GPT-2 init predicts nearly uniformly: loss close to ln(vocab).
    assert loss.item() == pytest.approx(torch.log(torch.tensor(64.0)).item(), rel=0.05)


def test_embeddings_are_tied():
    model = make_model()
    assert model.lm_head.weight is model.transformer.wte.weight


def test_attention_is_causal():
    model = make_model()
    idx = torch.randint(0, 64, (1, 12))
    changed = idx.clone()
    changed[0, 8] = (idx[0, 8] + 1) % 64
    a, _ = model(idx)
    b, _ = model(changed)
    assert torch.allclose(a[0, :8], b[0, :8], atol=1e-6)  # the past does not see the future
    assert not torch.allclose(a[0, 8:], b[0, 8:])


def test_model_overfits_one_batch():
    torch.manual_seed(0)
    model = GPT(TINY).train()
    x = torch.randint(0, 64, (4, 16))
    y = torch.roll(x, -1, dims=1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1  # from ~4.16 (ln 64): it memorised the batch


def test_accumulating_two_half_batches_equals_one_full_batch():
    x = torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(2))

    full = make_model(seed=3).train()
    _, loss = full(x, y)
    loss.backward()

    accum = make_model(seed=3).train()
    for xs, ys in ((x[:4], y[:4]), (x[4:], y[4:])):
        _, loss = accum(xs, ys)
        (loss / 2).backward()  # what train_bpe.py does with --grad_accum_steps 2

    for (name, p), q in zip(full.named_parameters(), accum.parameters()):
        # fp32 sums in a different order: agreement to ~1e-6 relative, not bitwise.
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6), name


def greedy(model, prompt, n, use_cache):
    return torch.stack(list(model.generate(prompt, n, temperature=0, use_cache=use_cache)), dim=1)


def test_kv_cache_matches_full_recompute_past_block_size():
    model = make_model(seed=4)
    prompt = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(5))
    n = 3 * TINY.block_size  # crosses the context limit several times
    assert torch.equal(greedy(model, prompt, n, True), greedy(model, prompt, n, False))


def test_kv_cache_logits_match_a_full_forward():
    model = make_model(seed=6)
    idx = torch.randint(0, 64, (1, 10))
    full, _ = model(idx)
    cache = KVCache(TINY, 1, "cpu", torch.float32)
    prefill, _ = model(idx[:, :6], cache=cache)
    steps = [model(idx[:, t : t + 1], cache=cache)[0] for t in range(6, 10)]
    cached = torch.cat([prefill, *steps], dim=1)
    assert torch.allclose(full, cached, atol=1e-5)


def test_prompt_longer_than_block_is_cropped_not_an_error():
    model = make_model()
    prompt = torch.randint(0, 64, (1, 40))
    assert len(list(model.generate(prompt, 3, temperature=0))) == 3


def test_temperature_zero_is_deterministic_and_argmax():
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 2.9]])
    assert sample_next(logits, temperature=0).tolist() == [1, 0]
    model = make_model(seed=7)
    prompt = torch.randint(0, 64, (1, 4))
    assert torch.equal(greedy(model, prompt, 20, True), greedy(model, prompt, 20, True))


def test_top_k_larger_than_vocab_is_clamped():
    logits = torch.randn(2, 64)
    token = sample_next(logits, temperature=1.0, top_k=10_000, generator=torch.Generator().manual_seed(0))
    assert token.shape == (2,) and (0 <= token).all() and (token < 64).all()


def test_top_k_and_top_p_only_pick_allowed_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    gen = torch.Generator().manual_seed(0)
    k2 = {sample_next(logits, 1.0, top_k=2, generator=gen).item() for _ in range(200)}
    assert k2 == {0, 1}
    p = {sample_next(logits, 1.0, top_p=0.7, generator=gen).item() for _ in range(200)}
    assert p == {0, 1}  # 0.5 alone is short of 0.7; 0.5 + 0.3 reaches it
    p_tiny = {sample_next(logits, 1.0, top_p=0.01, generator=gen).item() for _ in range(50)}
    assert p_tiny == {0}  # the likeliest token always stays


def test_sampling_is_reproducible_with_a_generator():
    logits = torch.randn(1, 64)
    a = [sample_next(logits, 0.9, generator=torch.Generator().manual_seed(3)).item() for _ in range(5)]
    assert len(set(a)) == 1


@pytest.mark.parametrize("layout", [dict(), dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", bias=False,
                                                   tie_embeddings=False)])
def test_decode_layout_changes_memory_order_only(layout):
    config = GPTConfig(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embed=32, dropout=0.0, **layout)
    usual, decode = make_model(seed=4, config=config), use_decode_layout(make_model(seed=4, config=config))
    assert all(torch.equal(a, b) for a, b in zip(usual.state_dict().values(), decode.state_dict().values()))
    assert (decode.lm_head.weight is decode.transformer.wte.weight) == config.tie_embeddings
    assert decode.transformer.h[0].mlp.c_fc.weight.stride() == (1, decode.transformer.h[0].mlp.c_fc.out_features)
    prompt = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(5))
    a, b = usual(prompt)[0], decode(prompt)[0]
    # other summation orders in float32: differences of a few eps * sqrt(width) of the logits' scale
    assert (a - b).abs().max() <= 16 * torch.finfo(torch.float32).eps * a.abs().max() * 32 ** 0.5
    greedy = [torch.stack(list(m.generate(prompt, 20, temperature=0.0)), 1) for m in (usual, decode)]
    assert torch.equal(*greedy)


@pytest.fixture
def set_threads():
    """torch.set_num_threads for one test: the count before it is restored afterwards."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.mark.parametrize("streamed", [False, True])
def test_split_matrices_give_the_same_samples_and_follow_training(monkeypatch, set_threads, streamed):
    set_threads(3)  # 3 does not divide the widths below: the last block is padded
    monkeypatch.setattr(model_module, "SPLIT_MIN_SIZE", 0)  # split every matrix of this tiny model
    monkeypatch.setattr(model_module, "STREAMED_MIN_BYTES", 0 if streamed else 2**40)
    config = GPTConfig(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embed=32, dropout=0.0, pos_emb="rope",
                       norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False)
    usual, split = make_model(seed=4, config=config), use_decode_layout(make_model(seed=4, config=config))
    # (threads, ceil(64 / 3), in) streamed, else (threads, in, ceil(64 / 3))
    assert split.lm_head.parts.shape == ((3, 22, 32) if streamed else (3, 32, 22))
    assert split.lm_head.parts_streamed == streamed
    assert all(torch.equal(a, b) for a, b in zip(usual.state_dict().values(), split.state_dict().values()))
    prompt = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(5))
    greedy = [torch.stack(list(m.generate(prompt, 20, temperature=0.0)), 1) for m in (usual, split)]
    assert torch.equal(*greedy)  # a batch of 2: 2 rows, then 10 at the prefill, both through the split copy
    with torch.inference_mode():
        x = torch.randn(1, 1, 32)
        # the same dot products, only another summation order at most: a few eps of the output's scale
        torch.testing.assert_close(split.lm_head(x), usual.lm_head(x), rtol=0, atol=1e-5)
    # Training ignores the copies: gradients reach the weights, and a changed weight is used as it is.
    split.train()
    _, loss = split(prompt, prompt)
    loss.backward()
    assert split.lm_head.weight.grad is not None and split.lm_head.weight.grad.abs().sum() > 0
    with torch.no_grad():
        split.lm_head.weight.mul_(2)
        usual.lm_head.weight.mul_(2)
    split.eval()
    with torch.inference_mode():
        torch.testing.assert_close(split.lm_head(x), usual.lm_head(x), rtol=0, atol=1e-5)


def test_split_copies_of_weights_loaded_under_inference_mode(monkeypatch, set_threads):
    set_threads(3)
    monkeypatch.setattr(model_module, "SPLIT_MIN_SIZE", 0)
    prompt = torch.randint(0, 64, (1, 5), generator=torch.Generator().manual_seed(5))
    usual = make_model(seed=4)
    with torch.inference_mode():  # as sample_bpe.py loads and samples: the weights are inference tensors
        split = use_decode_layout(make_model(seed=4))
        assert split.lm_head.parts is not None and split.lm_head.weight.is_inference()
        tokens = torch.stack(list(split.generate(prompt, 12, temperature=0.0)), 1)
    assert torch.equal(tokens, torch.stack(list(usual.generate(prompt, 12, temperature=0.0)), 1))


def test_the_streamed_layout_is_for_models_larger_than_the_cache(monkeypatch, set_threads):
    set_threads(2)
    monkeypatch.setattr(model_module, "SPLIT_MIN_SIZE", 0)
    model = make_model()
    matrix_bytes = 4 * sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    for limit, streamed in ((matrix_bytes - 1, True), (matrix_bytes, False)):
        monkeypatch.setattr(model_module, "STREAMED_MIN_BYTES", limit)
        assert use_decode_layout(make_model()).lm_head.parts_streamed == streamed


def test_one_thread_makes_no_split_copies(monkeypatch, set_threads):
    set_threads(1)
    monkeypatch.setattr(model_module, "SPLIT_MIN_SIZE", 0)
    assert use_decode_layout(make_model()).lm_head.parts is None
