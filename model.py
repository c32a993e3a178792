"""A GPT-2 style decoder-only Transformer with a KV cache for generation, or its Llama/Qwen3 variant.

The default layout (pre-LayerNorm blocks, GELU MLP, learned positions, tied embeddings, parameter
names) matches GPT-2, so a checkpoint maps one-to-one onto Hugging Face's ``GPT2LMHeadModel``.
GPTConfig's layout fields switch pieces to the Llama family's (rotary positions, RMSNorm, SwiGLU,
no biases, QK-norm as in Qwen3, an untied head): with all of them the model is what
``LlamaForCausalLM`` / ``Qwen3ForCausalLM`` and llama.cpp's ``llama`` / ``qwen3`` compute.
Checkpoints saved before these fields existed lack them and get the defaults: GPT-2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

import lm_loss


@dataclass
class GPTConfig:
    vocab_size: int = 8000  # tokenizer size; bigger = shorter sequences but a larger embedding table
    block_size: int = 256  # longest context the model sees; attention cost grows with its square
    n_layer: int = 6  # depth: more layers = more capacity, slower steps
    n_head: int = 6  # attention heads; must divide n_embed
    n_embed: int = 384  # width of the residual stream
    dropout: float = 0.1  # regularisation for small corpora; 0 for large ones or for exact tests
    attn_dropout: float | None = None  # dropout on the attention weights; None: dropout's value (GPT-2). On a CPU
    #                                    any value > 0 costs SDPA its fused kernel: ~1.7x the step time at 4 x 128
    bias: bool = True  # biases in Linear and LayerNorm, as GPT-2 has them
    # Layout. The defaults are GPT-2; "rope" + "rmsnorm" + "swiglu" + bias False is Llama, + qk_norm Qwen3.
    pos_emb: str = "learned"  # "learned": a position table (GPT-2); "rope": rotary (Llama), no table and
    #                           relative positions, which need no parameters and generalise across offsets
    rope_theta: float = 10000.0  # rotary base (Llama 2's value); larger spreads the frequencies for longer contexts
    norm: str = "layernorm"  # "rmsnorm": scale only, no mean subtraction (Llama); a little cheaper
    qk_norm: bool = False  # RMSNorm on each head's queries and keys before attention (Qwen3): bounds the
    #                        attention logits, so higher learning rates stay stable
    mlp: str = "gelu"  # "swiglu": silu(gate) * up, hidden 8/3 x wider (same parameters as GELU's 4x);
    #                    "relu2": relu(x)^2 (modded-nanogpt; no standard tool runs it)
    tie_embeddings: bool = True  # output layer shares the token embedding; False: its own matrix (more
    #                              parameters, a head free to differ from the input side)
    zero_init_proj: bool = False  # output projections of attention and MLP start at zero (modded-nanogpt):
    #                               each block starts as the identity; only the initialisation differs
    logit_softcap: float = 0.0  # > 0: logits = cap * tanh(logits / cap) (Gemma 2, modded-nanogpt);
    #                             0 = off; llama.cpp's llama/qwen3 and HF's Llama do not apply it

    def check(self) -> None:
        """Raises ValueError when these values describe no model (every checkpoint is checked with it)."""
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"config {name} is {value!r}, not a positive integer")
        if self.n_embed % self.n_head:
            raise ValueError(f"config n_embed {self.n_embed} is not divisible by n_head {self.n_head}")
        for name, value in (("dropout", self.dropout), ("attn_dropout", self.attention_dropout)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ValueError(f"config {name} is {value!r}, not in [0, 1)")
        for name in ("bias", "qk_norm", "tie_embeddings", "zero_init_proj"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"config {name} is {getattr(self, name)!r}, not True or False")
        for name, choices in (("pos_emb", POS_EMBS), ("norm", NORMS), ("mlp", MLPS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"config {name} is {getattr(self, name)!r}, not one of {', '.join(choices)}")
        if self.pos_emb == "rope" and (self.n_embed // self.n_head) % 2:
            raise ValueError(f"config n_embed {self.n_embed} / n_head {self.n_head} gives an odd head size "
                             f"({self.n_embed // self.n_head}): rotary positions need an even one")
        for name in ("rope_theta", "logit_softcap"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0 or (name == "rope_theta" and value <= 1):
                raise ValueError(f"config {name} is {value!r}, not a valid number")

    @property
    def attention_dropout(self) -> float:
        """Dropout on the attention weights: attn_dropout, or dropout's value when that is None (GPT-2)."""
        return self.dropout if self.attn_dropout is None else self.attn_dropout

    @property
    def mlp_hidden(self) -> int:
        """Hidden width of the MLP: 4 x n_embed, or for SwiGLU's two input matrices 2/3 of that, rounded
        up to a multiple of 32 (as Llama rounds to its multiple_of) so both hold about the same parameters."""
        if self.mlp == "swiglu":
            return 32 * math.ceil(8 * self.n_embed / 3 / 32)
        return 4 * self.n_embed


POS_EMBS = ("learned", "rope")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "swiglu", "relu2")
# GPTConfig fields beyond the sizes (train_bpe.py has flags of the same names).
LAYOUT_FIELDS = ("pos_emb", "rope_theta", "norm", "qk_norm", "mlp", "bias", "tie_embeddings", "zero_init_proj",
                 "logit_softcap")
# The layout fields as GPT-2 has them (GPTConfig's defaults; zero_init_proj only changes the initialisation).
GPT2_LAYOUT = dict(pos_emb="learned", norm="layernorm", mlp="gelu", bias=True, qk_norm=False, tie_embeddings=True,
                   logit_softcap=0.0)
# What Llama and Qwen3 need; the head may be tied or not, QK-norm makes it Qwen3, any rope_theta goes.
LLAMA_LAYOUT = dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", bias=False, logit_softcap=0.0)


def architecture(config: dict) -> str | None:
    """"gpt2", "llama" or "qwen3": the standard model that computes exactly what this (saved) config does, or
    None for a mix of options none of them has. Configs saved before the layout fields existed are GPT-2."""
    layout = {name: config.get(name, default) for name, default in GPT2_LAYOUT.items()}
    if layout == GPT2_LAYOUT:
        return "gpt2"
    if all(layout[name] == value for name, value in LLAMA_LAYOUT.items()):
        return "qwen3" if layout["qk_norm"] else "llama"
    return None


def unexportable(config: dict) -> str:
    """Why no standard model computes what config does (architecture() gave None), for exporters' messages."""
    options = ", ".join(f"{name}={config[name]}" for name in GPT2_LAYOUT
                        if name in config and config[name] != GPT2_LAYOUT[name])
    return (f"was trained with {options}: neither GPT-2's layout (the defaults) nor Llama/Qwen3's (rope, rmsnorm, "
            f"swiglu, no bias, no logit soft-cap) has that")


NORM_EPS = 1e-5  # LayerNorm's and RMSNorm's epsilon: GPT-2's and Llama's layer_norm / rms_norm eps


class Linear(nn.Linear):
    """nn.Linear that sampling on a CPU can give a copy of its matrix split by output columns, one block per
    thread (`parts`, made by use_decode_layout). BLAS runs a product of a few rows on one core however many
    threads there are; a batched product over the blocks runs each block on its own core. Each output is
    still one dot product of a row and a column, so the values stay those of F.linear up to float rounding
    (BLAS may sum in another order: a few units in the last place). The copy is used only without gradients
    and only while the weight has not changed since it was made.

    The blocks come in two layouts. (threads, in, block): each block multiplies the rows from the right,
    the faster way for matrices that stay in the cache from one token to the next. (threads, block, in),
    `parts_streamed`: each block multiplies the rows' transpose from the left, one contiguous dot product
    per output; BLAS streams a matrix from memory nearly at the memory's speed that way, 1.5-1.9x the
    other layout when the model's matrices do not fit the cache (bench/sample.py, RESULTS "Sampling VI").
    """

    parts: torch.Tensor | None = None  # (threads, in, ceil(out / threads)) or, streamed, (threads, block, in);
    #                                    the last block padded with zeros
    parts_streamed: bool = False  # parts is (threads, block, in)
    parts_version: int = -1  # version(weight) when parts was made

    def forward(self, x):
        parts = self.parts
        if parts is None or x.numel() > SPLIT_MAX_ROWS * self.in_features or torch.is_grad_enabled() \
                or version(self.weight) != self.parts_version:
            return F.linear(x, self.weight, self.bias)
        if self.parts_streamed:
            columns = x.reshape(-1, self.in_features).t().expand(parts.size(0), -1, -1)  # (threads, in, rows)
            y = torch.bmm(parts, columns).permute(2, 0, 1).reshape(*x.shape[:-1], -1)  # (..., threads * block)
        else:
            rows = x.reshape(1, -1, self.in_features).expand(parts.size(0), -1, -1)  # (threads, rows, in)
            y = torch.bmm(rows, parts).transpose(0, 1).reshape(*x.shape[:-1], -1)  # (..., threads * block)
        if y.size(-1) != self.out_features:
            y = y[..., : self.out_features]
        return y if self.bias is None else y + self.bias


def version(tensor: torch.Tensor) -> int:
    """The tensor's version counter (in-place changes so far); 0 for one made under torch.inference_mode,
    which counts none (sample_bpe.py loads and samples under it)."""
    return 0 if tensor.is_inference() else tensor._version


class RMSNorm(nn.RMSNorm):
    """nn.RMSNorm (a gain, never a bias, as Llama), written out as Llama computes it: in float32, then back to
    the input's type. PyTorch 2.13's CPU version gives the same values but took 1.5x (float32) to 1.9x (bf16
    autocast) the time of these five operations for forward + backward at the preset's (8, 256, 128)."""

    def forward(self, x):
        return self.weight * rms_normalise(x, self.eps)


def rms_normalise(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x divided by the root mean square of its last dimension, computed in float32 and returned in x's type
    (Llama's arithmetic); RMSNorm and QK-norm multiply it by their gains."""
    # Llama's x.float() and .to(x.dtype), skipped for float32 input: no-ops that still cost ~0.4 us a call
    y = x if x.dtype == torch.float32 else x.float()
    y = y * torch.rsqrt(y.square().mean(-1, keepdim=True) + eps)  # (..., C)
    return y if x.dtype == torch.float32 else y.to(x.dtype)


def make_norm(config: GPTConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(config.n_embed, eps=NORM_EPS)
    return nn.LayerNorm(config.n_embed, eps=NORM_EPS, bias=config.bias)


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """F.dropout, skipped outright when it would do nothing: sampling calls it nine times per token."""
    return F.dropout(x, p, training=True) if training and p > 0 else x


def rope_tables(config: GPTConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The tables rotate() turns every position by: (block_size, head_size) each, in float32.

    Pair i of a head (dimensions i and i + hs/2, the "rotate half" layout of Hugging Face's Llama, so
    weights export without permuting) turns by position x theta^(-2i / hs). The tables hold each pair's
    cos twice, and its sin with the sign the pair's first dimension takes: [-sin, sin].
    """
    hs = config.n_embed // config.n_head
    inv_freq = 1.0 / config.rope_theta ** (torch.arange(0, hs, 2, dtype=torch.float32) / hs)  # (hs/2,)
    return rotation_tables(torch.outer(torch.arange(config.block_size, dtype=torch.float32), inv_freq))


def rotation_tables(angles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """rotate()'s tables from (T, hs/2) angles, one per pair: (T, hs) each, [cos, cos] and [-sin, sin]."""
    return angles.cos().repeat(1, 2), torch.cat([-angles.sin(), angles.sin()], dim=1)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of (B, nh, T, hs) queries or keys by (T, hs) tables from rope_tables.

    Each pair (x1, x2) becomes (x1 cos - x2 sin, x2 cos + x1 sin); rolling x by hs/2 puts each pair's
    partner beside it, so the whole rotation is four tensor operations (a one-token step is bound by
    their number, not their size), with the same float results as the textbook form."""
    if cos.dtype != x.dtype:
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + x.roll(x.size(-1) // 2, dims=-1) * sin


class KVCache:
    """Keys and values of the tokens seen so far, for every layer: (B, nh, block_size, hs) each."""

    def __init__(self, config: GPTConfig, batch_size: int, device, dtype):
        shape = (batch_size, config.n_head, config.block_size, config.n_embed // config.n_head)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.pos = 0  # number of positions filled

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Stores this step's (B, nh, T, hs) keys/values; returns all of them so far."""
        end = self.pos + k.size(2)
        self.k[layer].narrow(2, self.pos, k.size(2)).copy_(k)
        self.v[layer].narrow(2, self.pos, k.size(2)).copy_(v)
        return self.k[layer].narrow(2, 0, end), self.v[layer].narrow(2, 0, end)

    def reset(self) -> None:
        self.pos = 0


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        assert config.n_embed % config.n_head == 0
        self.n_head = config.n_head
        self.c_attn = Linear(config.n_embed, 3 * config.n_embed, bias=config.bias)  # q, k, v at once
        self.c_proj = Linear(config.n_embed, config.n_embed, bias=config.bias)
        self.dropout = config.dropout
        self.attn_dropout = config.attention_dropout
        self.qk_norm = config.qk_norm
        if config.qk_norm:  # one gain per head dimension, shared by the heads (as Qwen3's q_norm / k_norm)
            self.q_norm = RMSNorm(config.n_embed // config.n_head, eps=NORM_EPS)
            self.k_norm = RMSNorm(config.n_embed // config.n_head, eps=NORM_EPS)

    def forward(self, x, cache: KVCache | None = None, layer: int = 0, rope=None):
        y = self.attend(self.c_attn(x), cache, layer, rope, self.attn_dropout if self.training else 0.0)
        return dropout(self.c_proj(y), self.dropout, self.training)

    def normalise_heads(self, qk: torch.Tensor) -> torch.Tensor:
        """(B, 2nh, T, hs) queries then keys → each head RMS-normalised, queries times q_norm's gain and keys
        times k_norm's: what q_norm and k_norm compute, in one pass over both (half the operations, which is
        most of their cost in a one-token step)."""
        nh, hs = self.n_head, qk.size(-1)
        # (2nh, 1, hs): q_norm's gain for the query heads, k_norm's for the key heads
        gain = torch.cat([self.q_norm.weight.expand(nh, hs), self.k_norm.weight.expand(nh, hs)])[:, None]
        return gain * rms_normalise(qk, self.q_norm.eps)

    def attend(self, qkv, cache: KVCache | None = None, layer: int = 0, rope=None, dropout_p: float = 0.0):
        """(B, T, 3C) queries, keys and values → (B, T, C): every head's attention, before the projection."""
        B, T, C = qkv.size(0), qkv.size(1), qkv.size(2) // 3
        nh, hs = self.n_head, C // self.n_head
        qkv = qkv.view(B, T, 3 * nh, hs).transpose(1, 2)  # (B, 3nh, T, hs): query, key, value heads
        qk, v = qkv.split_with_sizes([2 * nh, nh], dim=1)  # (B, 2nh, T, hs), (B, nh, T, hs)
        if self.qk_norm:
            qk = self.normalise_heads(qk)
        if rope is not None:  # (cos, sin) of this step's positions: the cache's offset is already in them
            qk = rotate(qk, *rope)  # queries and keys in one go: half the calls of a one-token step
        q, k = qk.chunk(2, dim=1)  # (B, nh, T, hs) each
        if cache is not None:
            if T > 1 and cache.pos > 0:
                raise ValueError("a multi-token step must start from an empty cache (prefill)")
            k, v = cache.update(layer, k, v)  # (B, nh, pos + T, hs)
        # A prefill is causal; one new token attends to every cached one. SDPA picks flash attention on CUDA.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, dropout_p=dropout_p)  # (B, nh, T, hs)
        return y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.kind = config.mlp
        hidden = config.mlp_hidden
        # SwiGLU's gate and up projections are one matrix (one matmul): rows [:hidden] gate, [hidden:] up.
        self.c_fc = Linear(config.n_embed, (2 if self.kind == "swiglu" else 1) * hidden, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's "gelu_new"
        self.c_proj = Linear(hidden, config.n_embed, bias=config.bias)
        self.dropout = config.dropout

    def forward(self, x):
        return dropout(self.c_proj(self.activate(self.c_fc(x))), self.dropout, self.training)

    def activate(self, h):
        """(B, T, hidden) or, for SwiGLU, (B, T, 2 * hidden) → (B, T, hidden): the nonlinearity."""
        if self.kind == "swiglu":
            gate, up = h.chunk(2, dim=-1)
            return F.silu(gate) * up
        if self.kind == "relu2":
            return F.relu(h).square()
        return self.gelu(h)


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x, cache: KVCache | None = None, layer: int = 0, rope=None):
        x = x + self.attn(self.ln_1(x), cache, layer, rope)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        config.check()
        self.config = config
        self.chunked_loss = True  # training loss on a CPU through lm_loss (False: the plain path, to compare)
        self.dropout = config.dropout  # on the embeddings; set_dropout turns this and the blocks' off and on
        modules = dict(wte=nn.Embedding(config.vocab_size, config.n_embed))
        if config.pos_emb == "learned":
            modules["wpe"] = nn.Embedding(config.block_size, config.n_embed)
        modules |= dict(h=nn.ModuleList(Block(config) for _ in range(config.n_layer)), ln_f=make_norm(config))
        self.transformer = nn.ModuleDict(modules)
        self.lm_head = Linear(config.n_embed, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight  # tied input/output embeddings
        if config.pos_emb == "rope":  # derived from the config: not saved in the state dict
            cos, sin = rope_tables(config)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        # GPT-2 scales the residual projections by 1/sqrt(2 * n_layer): two residual adds per block.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                if config.zero_init_proj:
                    nn.init.zeros_(p)
                else:
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def set_dropout(self, on: bool) -> None:
        """Turns the config's dropout (embeddings, residual branches, attention weights) on or off for the
        training steps that follow; the config itself, which checkpoints save, keeps its values."""
        p, attention = (self.config.dropout, self.config.attention_dropout) if on else (0.0, 0.0)
        self.dropout = p
        for block in self.transformer.h:
            block.attn.dropout, block.attn.attn_dropout, block.mlp.dropout = p, attention, p

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding and "wpe" in self.transformer else n

    def forward(self, idx, targets=None, cache: KVCache | None = None, teacher: lm_loss.Teacher | None = None):
        """idx: (B, T) token ids → logits (B, T, vocab), and the mean cross-entropy if targets are given: against
        the targets, or with a teacher (distillation, lm_loss.Teacher of B * T rows) against the mix of targets
        and the teacher's distribution that lm_loss.cross_entropy describes.

        Training on a CPU (targets, gradients on, self.chunked_loss, not compiled) returns (None, loss): the
        loss is computed in chunks without the whole logits, much faster there (lm_loss.py)."""
        B, T = idx.shape
        x = self.hidden(idx, cache)
        if targets is not None and self.chunked_loss and x.device.type == "cpu" and torch.is_grad_enabled() \
                and not torch.compiler.is_compiling():  # torch.compile traces the plain path as one graph
            loss = lm_loss.cross_entropy(x.view(B * T, -1), self.lm_head.weight, targets.reshape(-1),
                                         self.config.logit_softcap, teacher)
            return None, loss  # the logits were never formed as a whole (lm_loss.py says why)
        logits = self.cap_logits(self.lm_head(x))  # (B, T, vocab)
        loss = None
        if targets is not None and teacher is not None:
            taught = lm_loss.capped(F.linear(teacher.hidden, teacher.head), teacher.softcap)  # (B * T, vocab)
            loss = lm_loss.distilled_cross_entropy(logits.view(B * T, -1), targets.reshape(-1), taught,
                                                   teacher.share)
        elif targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def hidden(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """(B, T) token ids → the (B, T, C) final hidden states that the output layer turns into logits."""
        x, rope = self.embed(idx, cache)
        x = dropout(x, self.dropout, self.training)
        for i, block in enumerate(self.transformer.h):
            x = block(x, cache, i, rope)
        if cache is not None:
            cache.pos += idx.size(1)
        return self.transformer.ln_f(x)

    def embed(self, idx: torch.Tensor, cache: KVCache | None) -> tuple[torch.Tensor, tuple | None]:
        """(B, T) token ids after the cache's positions → their (B, T, C) embeddings, and the rotary tables of
        their positions for the rope layout (else None, the positions being in the embeddings)."""
        start, T = (cache.pos if cache is not None else 0), idx.size(1)
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens is longer than block_size {self.config.block_size}")
        x = self.transformer.wte(idx)  # (B, T, C)
        if self.config.pos_emb == "rope":  # the rotations of positions start .. start + T - 1
            return x, (self.rope_cos[start : start + T], self.rope_sin[start : start + T])  # (T, hs) each
        return x + self.transformer.wpe.weight[start : start + T], None  # the rows an Embedding lookup gives

    def cap_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The output layer's (B, T, vocab) products → logits: soft-capped when the config says so."""
        return lm_loss.capped(logits, self.config.logit_softcap)

    def decode(self, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """forward(idx, cache=cache)'s logits as in eval mode, computed for sampling: the same layers and
        operations, but each layer called through its forward method, past nn.Module.__call__ (so module
        hooks are not run). A one-token step of the preset's 4 x 128 model is ~150 tensor operations of about
        a microsecond each; the module machinery around them took another ~10% (421 against 378 us a token,
        2 threads). generate() runs every step through here; tests compare it with forward for every layout."""
        x, rope = self.embed(idx, cache)  # (B, T, C)
        for i, block in enumerate(self.transformer.h):  # Block.forward, without dropout
            attn, mlp = block.attn, block.mlp
            x = x + attn.c_proj.forward(attn.attend(attn.c_attn.forward(block.ln_1.forward(x)), cache, i, rope))
            x = x + mlp.c_proj.forward(mlp.activate(mlp.c_fc.forward(block.ln_2.forward(x))))
        cache.pos += idx.size(1)
        return self.cap_logits(self.lm_head.forward(self.transformer.ln_f.forward(x)))  # (B, T, vocab)

    @torch.inference_mode()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        use_cache: bool = True,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
    ) -> Iterator[torch.Tensor]:
        """Yields max_new_tokens next tokens, each (B,), continuing the (B, T) prompt idx.

        With the cache, the prompt is prefilled once and each step feeds one token. When the
        context fills block_size it keeps its newest half and is prefilled again (a "context
        shift", as llama.cpp does): a sliding window would re-prefill on every step and make the
        cache useless. Without the cache the whole window is recomputed each step, over exactly
        the same tokens, so both paths give the same logits. generator may be one per row, so that
        each row of a batch draws what it would draw alone; see sample_next for the other arguments.
        """
        block = self.config.block_size
        ctx = idx[:, -block:]
        cache = KVCache(self.config, idx.size(0), idx.device, self.lm_head.weight.dtype) if use_cache else None
        seen = None  # (B, vocab): the tokens so far, prompt included, for the repetition penalty
        if repetition_penalty != 1.0:
            seen = torch.zeros(idx.size(0), self.config.vocab_size, dtype=torch.bool, device=idx.device)
            seen.scatter_(1, idx, True)
        new = ctx  # tokens the model has not seen yet
        for _ in range(max_new_tokens):
            logits = self.decode(new, cache) if cache is not None else self(ctx)[0]  # (B, T, vocab)
            token = sample_next(logits[:, -1, :], temperature, top_k, top_p, generator, min_p, repetition_penalty,
                                seen)  # (B,)
            yield token
            if seen is not None:
                seen.scatter_(1, token[:, None], True)
            ctx = torch.cat([ctx, token[:, None]], dim=1)
            new = token[:, None]
            if ctx.size(1) > block:
                ctx = ctx[:, -max(1, block // 2) :]
                new = ctx
                if cache is not None:
                    cache.reset()


# use_decode_layout splits a matrix across the threads from this size (elements) on: below it the batched
# product costs more than it saves (bench/sample.py; the crossover was ~2^18 in cache, lower from memory).
SPLIT_MIN_SIZE = 2**17
SPLIT_MAX_ROWS = 16  # rows (batch x tokens) up to which the split copy is used: beyond, BLAS uses the threads
# The streamed layout (Linear.parts_streamed) for models whose matrices take more than this: 32 MiB, the L3
# cache of the CPU measured. 6 x 384 (55 MB in float32): 1.29x the tokens/s at batch 1 with it, 0.89x at a
# batch of 8; the preset's 4 x 128 (5 MB): 0.95x (bench/sample.py, RESULTS "Sampling VI").
STREAMED_MIN_BYTES = 32 * 2**20


def use_decode_layout(model: GPT) -> GPT:
    """Arranges the weights for sampling on a CPU (fast one-token steps); returns model. Call it once the
    weights are final: it makes copies of the large matrices, and training afterwards ignores them.

    1. The matrix of every Linear layer is stored transposed in memory. The values do not change, only their
       order (strides (1, out) instead of (out, 1)). A one-token step multiplies one vector by every matrix,
       and BLAS streams an (in, out) row-major matrix through that product ~1.3x faster than the usual
       (out, in) one on the CPUs measured. Prefill and long batches are matrix products, equally fast either
       way. A tied output layer shares its matrix with the embedding, whose lookups read this layout too.
    2. With more than one thread, each matrix of at least SPLIT_MIN_SIZE elements also gets a copy split by
       output columns into one block per thread (Linear.parts): one-token steps then use every core, where
       BLAS used one. This costs the memory of those matrices once more. A model whose matrices outgrow
       STREAMED_MIN_BYTES gets the blocks in the layout that streams from memory faster (see Linear).
    """
    threads = torch.get_num_threads()
    matrices = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]  # what one token step reads whole
    streamed = sum(w.numel() * w.element_size() for w in matrices) > STREAMED_MIN_BYTES
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                module.weight.data = module.weight.data.t().contiguous().t()  # same Parameter: ties survive
            if isinstance(module, Linear) and threads > 1 and module.weight.numel() >= SPLIT_MIN_SIZE:
                block = math.ceil(module.out_features / threads)
                padded = F.pad(module.weight, (0, 0, 0, threads * block - module.out_features))  # (threads * block, in)
                blocks = padded.view(threads, block, module.in_features)
                module.parts = (blocks if streamed else blocks.transpose(1, 2)).contiguous()
                module.parts_streamed = streamed
                module.parts_version = version(module.weight)
    return model


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | list[torch.Generator] | None = None,
    min_p: float = 0.0,
    repetition_penalty: float = 1.0,
    seen: torch.Tensor | None = None,
) -> torch.Tensor:
    """Picks one token per row of (B, vocab) logits: the argmax for temperature 0, else a draw from
    token_probs. generator: one for the batch, or one per row (then each row draws what it would alone)."""
    if temperature == 0:
        return penalise(logits.float(), repetition_penalty, seen).argmax(dim=-1)
    probs = token_probs(logits, temperature, top_k, top_p, min_p, repetition_penalty, seen)
    if isinstance(generator, list):
        return torch.cat([torch.multinomial(p[None], 1, generator=g)[0] for p, g in zip(probs, generator)])
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def penalise(logits: torch.Tensor, repetition_penalty: float, seen: torch.Tensor | None) -> torch.Tensor:
    """The repetition penalty of CTRL (Keskar et al. 2019) as transformers applies it: the logit of a token in
    seen (B, vocab) is divided by the penalty if positive, multiplied by it if negative; 1 = off."""
    if repetition_penalty == 1.0 or seen is None:
        return logits
    penalised = torch.where(logits > 0, logits / repetition_penalty, logits * repetition_penalty)
    return torch.where(seen, penalised, logits)


def token_probs(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    repetition_penalty: float = 1.0,
    seen: torch.Tensor | None = None,
) -> torch.Tensor:
    """The (B, vocab) distribution a token is drawn from, shaped in the order transformers' generate applies the
    same steps: repetition penalty, temperature, top-k, top-p, min-p.

    top_k 0, top_p 1 and min_p 0 are off; min_p keeps the tokens whose probability is at least min_p times
    the likeliest token's (after top-k and top-p).
    """
    logits = penalise(logits.float(), repetition_penalty, seen)
    # Shifted so the largest is 0 before dividing: a tiny temperature then gives -inf for the others, never
    # inf - inf = nan (the softmax is the same for any shift).
    logits = (logits - logits.max(dim=-1, keepdim=True).values) / temperature
    if top_k > 0:
        k = min(top_k, logits.size(-1))  # a top_k above the vocabulary means "all of them"
        kth = torch.topk(logits, k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the ones ranked above it already reach top_p (the first always stays).
        drop = probs.cumsum(dim=-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    if min_p > 0:
        probs = probs.masked_fill(probs < min_p * probs.max(dim=-1, keepdim=True).values, 0.0)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs
