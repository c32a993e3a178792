"""export_gguf.py: the file holds every weight and the tokenizer exactly, under llama.cpp's gpt2, llama or qwen3
architecture; llama.cpp runs it as our model does; and every input it cannot handle is one line."""

import copy
import errno
import json
import sys
from dataclasses import asdict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import nn

import export_gguf
import export_hf
import sample_bpe
import tokenizer
import train_bpe
import trainer
from checkpoint import load_checkpoint, load_model, save_checkpoint
from model import GPT, GPTConfig, rope_tables, rotate, rotation_tables

from helpers import TINY_TEXT

GGUF_HINT = "export needs the gguf extra: pip install gguf==0.19.0"
LLAMA_HINT = "the llama.cpp comparison needs llama.cpp's Python binding: pip install llama-cpp-python"
F16_UNIT = 2.0**-11  # unit roundoff of float16 (11 significant bits)


def exported(ckpt, out, *flags):
    """Exports with export_gguf.main and opens the file with gguf's own reader."""
    gguf = pytest.importorskip("gguf", reason=GGUF_HINT)
    assert export_gguf.main(["--ckpt", str(ckpt), "--out", str(out), *flags]) == 0
    return gguf.GGUFReader(out)


def field(reader, key):
    return reader.fields[key].contents()


# --------------------------------------------------------------------------- the file, read back


@pytest.mark.parametrize("outtype", ["f32", "f16"])
def test_every_tensor_and_the_tokenizer_read_back_exactly(tiny_run, tmp_path, outtype):
    ckpt = tiny_run / trainer.BEST_NAME
    reader = exported(ckpt, tmp_path / "model.gguf", "--outtype", outtype)
    state = load_checkpoint(ckpt)
    config, weights = state["config"], state["model"]

    assert field(reader, "general.architecture") == "gpt2"
    assert field(reader, "general.file_type") == {"f32": 0, "f16": 1}[outtype]  # ALL_F32, MOSTLY_F16
    assert field(reader, "gpt2.context_length") == config["block_size"]
    assert field(reader, "gpt2.embedding_length") == config["n_embed"]
    assert field(reader, "gpt2.block_count") == config["n_layer"]
    assert field(reader, "gpt2.attention.head_count") == config["n_head"]
    assert field(reader, "gpt2.feed_forward_length") == 4 * config["n_embed"]
    assert field(reader, "gpt2.attention.layer_norm_epsilon") == np.float32(1e-5)  # nn.LayerNorm's default

    # Every tensor but the tied output layer, under its llama.cpp name, with our values: f32 bit for bit,
    # f16 exactly as torch rounds to half (round to nearest even) for the matrices llama.cpp's converter halves.
    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == len(weights) - 1
    for name, ours in weights.items():
        if name == "lm_head.weight":
            continue
        [gguf_name] = export_gguf.gguf_names(name, export_gguf.GPT2)
        t = tensors[gguf_name]
        half = outtype == "f16" and ours.ndim == 2 and name != "transformer.wpe.weight"
        expected = (ours.half() if half else ours.float()).numpy()
        assert t.tensor_type.name == ("F16" if half else "F32"), name
        assert list(t.shape) == list(reversed(ours.shape)), name  # GGUF lists dimensions innermost first
        assert np.array_equal(np.asarray(t.data).reshape(ours.shape), expected), name

    # The tokenizer: tokens in id order, specials as control tokens, merges in rank order, the stored special ids.
    tok = Tokenizer.from_str(state["tokenizer_json"])
    specials = tokenizer.checkpoint_special_ids(state, tok)
    assert field(reader, "tokenizer.ggml.model") == "gpt2"
    assert field(reader, "tokenizer.ggml.pre") == "gpt-2"
    assert field(reader, "tokenizer.ggml.tokens") == [tok.id_to_token(i) for i in range(config["vocab_size"])]
    control = set(tok.get_added_tokens_decoder())
    assert field(reader, "tokenizer.ggml.token_type") == [3 if i in control else 1 for i in range(config["vocab_size"])]
    merges = json.loads(state["tokenizer_json"])["model"]["merges"]
    assert field(reader, "tokenizer.ggml.merges") == [" ".join(pair) for pair in merges]
    assert (specials.bos, specials.eos, specials.pad, specials.unk) == (2, 3, 0, 1)
    assert field(reader, "tokenizer.ggml.bos_token_id") == specials.bos
    assert field(reader, "tokenizer.ggml.eos_token_id") == specials.eos
    assert field(reader, "tokenizer.ggml.padding_token_id") == specials.pad
    assert field(reader, "tokenizer.ggml.unknown_token_id") == specials.unk
    assert field(reader, "tokenizer.ggml.add_bos_token") is False


def test_our_tensor_names_are_the_ones_llama_cpps_converter_gives_gpt2():
    gguf = pytest.importorskip("gguf", reason=GGUF_HINT)
    # Our parameter names are Hugging Face GPT-2's, which gguf-py's own table maps for llama.cpp's converter.
    table = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GPT2, 3)
    with torch.device("meta"):
        names = GPT(GPTConfig(n_layer=3)).state_dict()
    for name in names:
        if name != "lm_head.weight":  # tied: not written
            theirs = table.get_name(name, try_suffixes=(".weight", ".bias"))
            assert export_gguf.gguf_names(name, export_gguf.GPT2) == (theirs,), name


def test_special_ids_are_the_checkpoints_own(tmp_path):
    """GPT-2's layout: one <|endoftext|> as both start and end, no padding token, and more embedding rows
    than tokens (GPT-2 checkpoints pad 50257 to 50304); nothing is assumed from our own tokenizers' ids."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer_ = trainers.BpeTrainer(vocab_size=290, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                   show_progress=False)
    tok.train_from_iterator([TINY_TEXT], trainer=trainer_)
    tok.add_special_tokens(["<|endoftext|>"])
    end = tok.token_to_id("<|endoftext|>")
    assert end == tok.get_vocab_size() - 1
    config = GPTConfig(vocab_size=tok.get_vocab_size() + 7, block_size=16, n_layer=1, n_head=2, n_embed=16)
    ckpt = tmp_path / "gpt2like.pt"
    save_checkpoint(ckpt, {"model": GPT(config).state_dict(), "config": asdict(config),
                           **tokenizer.checkpoint_fields(tok)})

    reader = exported(ckpt, tmp_path / "model.gguf")
    assert field(reader, "tokenizer.ggml.bos_token_id") == end
    assert field(reader, "tokenizer.ggml.eos_token_id") == end
    assert "tokenizer.ggml.padding_token_id" not in reader.fields
    assert "tokenizer.ggml.unknown_token_id" not in reader.fields
    tokens, types = field(reader, "tokenizer.ggml.tokens"), field(reader, "tokenizer.ggml.token_type")
    assert len(tokens) == len(types) == config.vocab_size  # llama.cpp wants one token per embedding row
    assert tokens[end] == "<|endoftext|>" and types[end] == 3  # control
    assert tokens[end + 1:] == [f"[PAD{i}]" for i in range(end + 1, config.vocab_size)]
    assert types[end + 1:] == [5] * 7  # unused


# --------------------------------------------------------------------------- Llama and Qwen3 layouts

LLAMA = dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", bias=False)  # --preset cpu's layout, less its QK-norm
ROPE_LAYOUTS = {
    "llama": LLAMA,
    "llama-untied": {**LLAMA, "tie_embeddings": False},
    "qwen3": {**LLAMA, "qk_norm": True},
    "qwen3-untied": {**LLAMA, "qk_norm": True, "tie_embeddings": False},
}


def random_model(layout: dict, vocab_size: int = 64, seed: int = 0) -> GPT:
    """A tiny model with every parameter perturbed: norm gains of one would hide a misplaced tensor."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=vocab_size, block_size=32, n_layer=2, n_head=2, n_embed=32, dropout=0.0,
                          **layout)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def save(model: GPT, tok, path):
    save_checkpoint(path, {"model": model.state_dict(), "config": asdict(model.config),
                           **tokenizer.checkpoint_fields(tok)})
    return path


def converter_order(n_head: int, head_size: int) -> list[int]:
    """The rows of a Hugging Face Llama q_proj / k_proj in the order llama.cpp's converter writes them
    (LlamaModel.permute, convert_hf_to_gguf.py): row h hs + j hs/2 + i goes to h hs + 2i + j."""
    return [h * head_size + j * head_size // 2 + i
            for h in range(n_head) for i in range(head_size // 2) for j in range(2)]


@pytest.mark.parametrize("name", sorted(ROPE_LAYOUTS))
def test_llama_layouts_hold_what_llama_cpps_converter_makes_of_our_hugging_face_export(name, tiny_tokenizer,
                                                                                        tmp_path):
    """The independent route: export_hf.py's Llama / Qwen3 weights (test_layouts.py checks them against
    transformers), renamed by gguf-py's own table and, for llama, permuted as llama.cpp's converter does."""
    gguf = pytest.importorskip("gguf", reason=GGUF_HINT)
    model = random_model(ROPE_LAYOUTS[name], tiny_tokenizer.get_vocab_size())
    cfg, config = model.config, asdict(model.config)
    reader = exported(save(model, tiny_tokenizer, tmp_path / "m.pt"), tmp_path / "m.gguf")
    arch = "qwen3" if cfg.qk_norm else "llama"
    hs = cfg.n_embed // cfg.n_head

    table = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN3 if cfg.qk_norm else gguf.MODEL_ARCH.LLAMA, cfg.n_layer)
    expected = {}
    for hf_name, tensor in export_hf.hf_state_dict(model.state_dict(), config).items():
        if arch == "llama" and hf_name.endswith(("q_proj.weight", "k_proj.weight")):
            tensor = tensor[converter_order(cfg.n_head, hs)]
        expected[table.get_name(hf_name, try_suffixes=(".weight",))] = tensor
    assert ("output.weight" in expected) == (not cfg.tie_embeddings)  # a tied head is token_embd itself
    tensors = {t.name: t for t in reader.tensors}
    assert sorted(tensors) == sorted(expected)
    for gguf_name, ours in expected.items():
        t = tensors[gguf_name]
        assert t.tensor_type.name == "F32", gguf_name
        assert list(t.shape) == list(reversed(ours.shape)), gguf_name
        assert np.array_equal(np.asarray(t.data).reshape(ours.shape), ours.numpy()), gguf_name

    assert field(reader, "general.architecture") == arch
    assert field(reader, "general.file_type") == 0  # ALL_F32
    assert field(reader, f"{arch}.context_length") == cfg.block_size
    assert field(reader, f"{arch}.embedding_length") == cfg.n_embed
    assert field(reader, f"{arch}.block_count") == cfg.n_layer
    assert field(reader, f"{arch}.feed_forward_length") == cfg.mlp_hidden == 96
    assert field(reader, f"{arch}.attention.head_count") == cfg.n_head
    assert field(reader, f"{arch}.attention.head_count_kv") == cfg.n_head
    assert field(reader, f"{arch}.attention.layer_norm_rms_epsilon") == np.float32(1e-5)  # Llama's and ours
    assert field(reader, f"{arch}.rope.freq_base") == cfg.rope_theta
    assert field(reader, f"{arch}.rope.dimension_count") == hs
    if arch == "llama":  # as the converter, which writes it for llama only
        assert field(reader, "llama.vocab_size") == cfg.vocab_size

    # The tokenizer exactly as a gpt2 export of the same tokenizer writes it.
    gpt2 = exported(save(random_model({}, tiny_tokenizer.get_vocab_size()), tiny_tokenizer, tmp_path / "g.pt"),
                    tmp_path / "g.gguf")
    keys = sorted(key for key in gpt2.fields if key.startswith("tokenizer."))
    assert "tokenizer.ggml.merges" in keys and keys == sorted(k for k in reader.fields if k.startswith("tokenizer."))
    for key in keys:
        assert field(reader, key) == field(gpt2, key), key


def ggml_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mode: str) -> torch.Tensor:
    """ggml's rotation of (nh, T, hs) queries or keys by (T, hs/2) angle tables: rope type "norm" turns dimensions
    (2i, 2i + 1) by angle i, "neox" (i, i + hs/2) (ggml/src/ggml-cpu/ops.cpp, rotate_pairs)."""
    hs = x.shape[-1]
    first, second = (slice(0, hs, 2), slice(1, hs, 2)) if mode == "norm" else (slice(0, hs // 2), slice(hs // 2, hs))
    a, b = x[..., first], x[..., second]
    out = torch.empty_like(x)
    out[..., first], out[..., second] = a * cos - b * sin, a * sin + b * cos
    return out


@pytest.mark.parametrize("name, mode", [("llama", "norm"), ("qwen3", "neox")])  # llama.cpp's llama_model_rope_type
def test_llama_cpps_rotation_of_the_exported_rows_gives_our_attention_scores(name, mode):
    model = random_model(ROPE_LAYOUTS[name]).double()
    cfg, config = model.config, asdict(model.config)
    arch = export_gguf.ARCHITECTURES[name]
    written = {target: rows for target, rows, _ in export_gguf.gguf_tensors(model.state_dict(), config, arch, "f32")}
    T, hs = 12, cfg.n_embed // cfg.n_head
    x = torch.randn(T, cfg.n_embed, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    cos, sin = (t[:T].double() for t in rope_tables(cfg))  # the same angles on both sides: only the pairing differs
    half_cos, half_sin = cos[:, : hs // 2], sin[:, hs // 2 :]  # (T, hs/2): each pair's cos and sin once

    def heads(w):  # (T, C) @ (C, nh * hs) -> (nh, T, hs)
        return (x @ w.T).view(T, cfg.n_head, hs).transpose(0, 1)

    q, k, _ = model.transformer.h[0].attn.c_attn.weight.split(cfg.n_embed)
    ours = rotate(heads(q), cos, sin) @ rotate(heads(k), cos, sin).transpose(-1, -2)  # (nh, T, T)
    q_rows, k_rows = written["blk.0.attn_q.weight"], written["blk.0.attn_k.weight"]
    theirs = ggml_rope(heads(q_rows), half_cos, half_sin, mode) @ \
        ggml_rope(heads(k_rows), half_cos, half_sin, mode).transpose(-1, -2)
    torch.testing.assert_close(theirs, ours, rtol=1e-12, atol=1e-12)
    other = "neox" if mode == "norm" else "norm"  # and the other pairing would not do
    assert not torch.allclose(ggml_rope(heads(q_rows), half_cos, half_sin, other) @
                              ggml_rope(heads(k_rows), half_cos, half_sin, other).transpose(-1, -2), ours, atol=1e-3)


# --------------------------------------------------------------------------- refusals and failures


@pytest.mark.parametrize("layout, option", [
    (dict(mlp="relu2"), "mlp=relu2"),  # in no architecture llama.cpp runs
    (dict(logit_softcap=15.0), "logit_softcap=15.0"),
    (dict(bias=False), "bias=False"),  # GPT-2 without its biases
    ({**LLAMA, "bias": True}, "mlp=swiglu"),  # Llama with biases
    ({**LLAMA, "pos_emb": "learned"}, "norm=rmsnorm"),  # Llama with a position table
])
def test_a_layout_no_exported_architecture_has_is_refused(layout, option):
    with pytest.raises(export_gguf.ExportError, match="cannot be exported as GGUF") as refusal:
        export_gguf.gguf_architecture(asdict(GPTConfig(**layout)), "x.pt")
    assert option in str(refusal.value)


def test_without_the_gguf_package_one_line_says_what_to_install(tiny_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf now raises ImportError
    code = export_gguf.main(["--ckpt", str(tiny_run / trainer.BEST_NAME), "--out", str(tmp_path / "m.gguf")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "pip install gguf==0.19.0" in err
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_leaves_the_previous_file_intact(tiny_run, tmp_path, monkeypatch, capsys):
    gguf = pytest.importorskip("gguf", reason=GGUF_HINT)
    ckpt, out = str(tiny_run / trainer.BEST_NAME), tmp_path / "model.gguf"
    exported(ckpt, out)
    before = out.read_bytes()
    real = gguf.GGUFWriter.write_tensor_data

    def disk_fills_up(self, tensor, *args, **kwargs):  # the second tensor finds the disk full
        if getattr(self, "_written", 0):
            raise OSError(errno.ENOSPC, "No space left on device")
        self._written = 1
        return real(self, tensor, *args, **kwargs)

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", disk_fills_up)
    capsys.readouterr()
    assert export_gguf.main(["--ckpt", ckpt, "--out", str(out), "--outtype", "f16", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err and "free some disk space" in err
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.gguf"]  # no temporary file left behind


# --------------------------------------------------------------------------- llama.cpp runs it as we do

PROMPTS = {  # tokenization: what users type, and what the GPT-2 split treats specially
    "prose": "ROMEO:\nWhat light through yonder window breaks? It is the east, and Juliet is the sun.",
    "code": "def train_model(x):\n\tif x:\n\t\treturn x  # tabs\n\n\n    spaces = 4\r\nwindows line\r\n",
    "unicode": "naïve café é e\u0301 🙂👍🏽 中文字符 日本語 x\u00a0y\u3000z",
    "whitespace": "   leading, trailing   \n\n\n\t\t\tend\t",
    "contractions and numbers": "don't I'll we've it's 12345 3.14159 !!! ... ???",
}
GREEDY_PROMPTS = ["ROMEO:", "def train_model(x):\n\tif x:"]
NEW_TOKENS = 64


# What llama.cpp runs: GPT-2's layout, Llama's, --preset cpu's (Qwen3's, tied head) and Qwen3's with an untied head.
LLAMA_CPP_LAYOUTS = {"gpt2": {}, **{name: ROPE_LAYOUTS[name] for name in ("llama", "qwen3", "qwen3-untied")}}


def layout_flags(layout: dict) -> list[str]:
    """train_bpe.py's flags for GPTConfig's layout fields (a flag has its field's name)."""
    flags = []
    for name, value in layout.items():
        flags += [f"--{'' if value else 'no-'}{name}"] if isinstance(value, bool) else [f"--{name}", str(value)]
    return flags


@pytest.fixture(scope="module", params=sorted(LLAMA_CPP_LAYOUTS))
def llama_run(request, tiny_file, tmp_path_factory):
    """A model with room for a prompt plus 64 new tokens (llama.cpp cannot go past block_size), and its f32 export.
    300 steps: after 150 the Llama layout's greedy text was one token over and over, a weak comparison."""
    pytest.importorskip("gguf", reason=GGUF_HINT)
    out = tmp_path_factory.mktemp(f"llama_run_{request.param}")
    assert train_bpe.main([
        "--data_file", str(tiny_file), "--tokenizer_path", str(out / "tok.json"), "--out_dir", str(out),
        "--vocab_size", "512", "--n_layer", "2", "--n_head", "2", "--n_embed", "64", "--block_size", "128",
        "--dropout", "0", "--batch_size", "8", "--grad_accum_steps", "1", "--device", "cpu", "--no-amp",
        "--max_steps", "300", "--eval_interval", "300", "--eval_iters", "2", "--use_cosine", "--warmup_steps", "10",
        "--lr", "3e-3", *layout_flags(LLAMA_CPP_LAYOUTS[request.param]),
    ]) == 0
    ckpt = out / trainer.BEST_NAME
    assert export_gguf.main(["--ckpt", str(ckpt), "--out", str(out / "model.gguf")]) == 0
    return ckpt, out / "model.gguf"


def llama(path, block_size, **kwargs):
    """llama.cpp on one thread: for a model this small, a second thread only adds barriers where ggml's workers
    spin, and on a busy machine that turned 64 tokens from 0.4 s into 19 s."""
    llama_cpp = pytest.importorskip("llama_cpp", reason=LLAMA_HINT)
    return llama_cpp.Llama(model_path=str(path), n_ctx=block_size, verbose=False, seed=1234, n_threads=1, **kwargs)


@pytest.mark.slow
def test_llama_cpp_tokenizes_as_we_do(llama_run):
    ckpt, path = llama_run
    model, tok, _, _ = load_model(ckpt)
    llm = llama(path, model.config.block_size, vocab_only=True)
    for name, text in PROMPTS.items():
        ours = tok.encode(text, add_special_tokens=False).ids
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == ours, name
        assert llm.detokenize(ours) == tok.decode(ours).encode(), name
    # Special tokens typed in the text: ours become their ids, as llama.cpp's do when it parses specials
    # (llama-completion does for its prompt; with special=False they stay plain text there).
    text = "<bos>Hello<eos> and <pad>"
    assert llm.tokenize(text.encode(), add_bos=False, special=True) == tok.encode(text, add_special_tokens=False).ids


def llama_greedy(llm, ids: list[int], n: int) -> list[int]:
    """llama.cpp's own greedy decoding: its greedy sampler at temperature 0, no repetition penalty."""
    out = []
    for token in llm.generate(ids, temp=0.0, repeat_penalty=1.0):
        out.append(int(token))
        if len(out) == n:
            break
    return out


def divergence(model, path, prompt_ids, ours, theirs) -> str:
    """Where two greedy runs part, with both sides' logits of both tokens there: a near-tie or a real difference."""
    k = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
    if k is None:
        return f"llama.cpp gave {len(theirs)} new tokens, we gave {len(ours)}"
    prefix = prompt_ids + ours[:k]
    with torch.no_grad():
        mine = model(torch.tensor([prefix]))[0][0, -1]
    llm = llama(path, model.config.block_size, logits_all=True)
    llm.eval(prefix)
    other = llm.scores[len(prefix) - 1]
    a, b = ours[k], theirs[k]
    return (f"greedy runs part at new token {k}: ours picks {a}, llama.cpp {b}; our logits for them "
            f"{mine[a]:.6f} / {mine[b]:.6f}, llama.cpp's {other[a]:.6f} / {other[b]:.6f}")


@pytest.mark.slow
def test_llama_cpp_continues_greedily_as_sample_bpe_does(llama_run, capsys):
    ckpt, path = llama_run
    model, tok, _, _ = load_model(ckpt)
    llm = llama(path, model.config.block_size)  # llama.cpp's defaults: f16 KV cache, its thread count
    for prompt in GREEDY_PROMPTS:
        ids = tok.encode(prompt, add_special_tokens=False).ids
        assert len(ids) + NEW_TOKENS <= model.config.block_size
        ours = [int(t) for t in model.generate(torch.tensor([ids]), NEW_TOKENS, temperature=0)]
        theirs = llama_greedy(llm, ids, NEW_TOKENS)
        assert theirs == ours, divergence(model, path, ids, ours, theirs)

        capsys.readouterr()
        assert sample_bpe.main(["--ckpt", str(ckpt), "--prompt", prompt, "--temperature", "0",
                                "--max_new_tokens", str(NEW_TOKENS), "--device", "cpu"]) == 0
        text = capsys.readouterr().out
        assert text == prompt + llm.detokenize(theirs).decode("utf-8", errors="replace") + "\n"


class GgmlGelu(nn.Module):
    """ggml's CPU GELU: the tanh formula read from a table indexed by the input rounded to f16, so input and
    output are both rounded to f16; 0 below -10, the input above 10 (ggml/src/ggml-cpu/vec.h, GGML_GELU_FP16)."""

    def forward(self, x):
        table = F.gelu(x.half().to(x.dtype), approximate="tanh").half().to(x.dtype)
        return torch.where(x <= -10, torch.zeros_like(x), torch.where(x >= 10, x, table))


def ggml_rope_tables(config: GPTConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """rope_tables' cos and signed sin (float64) of the angles ggml's CPU rope turns by: theta_scale =
    freq_base^(-2/n_dims) and each pair's angle the previous one's times theta_scale, rounded to float32 at every
    step (ggml/src/ggml-cpu/ops.cpp, ggml_rope_cache_init); our rope_tables raises theta to each power directly."""
    hs = config.n_embed // config.n_head
    scale = np.float32(config.rope_theta) ** np.float32(-2.0 / hs)
    angles = np.empty((config.block_size, hs // 2), dtype=np.float32)
    theta = np.arange(config.block_size, dtype=np.float32)
    for i in range(hs // 2):
        angles[:, i] = theta
        theta = theta * scale  # float32 times float32: rounded to float32
    return rotation_tables(torch.from_numpy(angles).double())


def as_ggml_computes(model: GPT) -> GPT:
    """A float64 copy of model with the approximation ggml's CPU makes beyond float32 rounding for its layout:
    GELU read from an f16 table (gpt2), or rotary angles built by repeated float32 products (llama, qwen3)."""
    model = copy.deepcopy(model).double()
    if model.config.pos_emb == "rope":
        model.rope_cos, model.rope_sin = ggml_rope_tables(model.config)
    for block in model.transformer.h if model.config.mlp == "gelu" else ():
        block.mlp.gelu = GgmlGelu()
    return model


def logits(model, ids) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids]))[0][0].double().numpy()


@pytest.mark.slow
def test_llama_cpp_logits_match_ours(llama_run):
    llama_cpp = pytest.importorskip("llama_cpp", reason=LLAMA_HINT)
    ckpt, path = llama_run
    model, tok, _, _ = load_model(ckpt)
    ids = tok.encode(PROMPTS["prose"], add_special_tokens=False).ids
    f32 = llama_cpp.GGML_TYPE_F32  # an f32 KV cache: no f16 rounding of keys and values
    llm = llama(path, model.config.block_size, logits_all=True, type_k=f32, type_v=f32)
    llm.eval(ids)
    theirs = np.asarray(llm.scores[: len(ids)], dtype=np.float64)

    # Two things differ from our float32 forward: ggml's approximation (above), whose effect on this input our
    # float64 emulation of it measures, and float32 rounding in another order, of the size of our own float32
    # error against float64. Twice their sum: llama.cpp's roundings are independent of ours, and an input near
    # an f16 rounding boundary may round the other way there (each still within one f16 rounding).
    ours = logits(model, ids)
    exact = logits(copy.deepcopy(model).double(), ids)
    ggml = logits(as_ggml_computes(model), ids)
    rounding = np.abs(ours - exact)
    tolerance = 2 * (np.abs(ggml - exact).max() + rounding.max())
    assert np.abs(theirs - ours).max() <= tolerance
    # And nothing else differs: on average llama.cpp is within float32 rounding of one of the two (ggml's
    # approximation today), far below the average gap between them where that gap is large (GELU's table; the
    # rotary angles differ by less than float32 rounding), while the bound above allows the worst case.
    gap = np.abs(ggml - exact).mean()
    assert min(np.abs(theirs - ggml).mean(), np.abs(theirs - exact).mean()) <= max(0.2 * gap, 2 * rounding.mean())

    # f16 file: every weight matrix and every matrix product's input carry f16's relative rounding F16_UNIT;
    # a loose first-order bound over the Linear layers in a row (4 n_layer + 1) catches a wrong layout, not drift.
    half = path.with_name("model-f16.gguf")
    assert export_gguf.main(["--ckpt", str(ckpt), "--out", str(half), "--outtype", "f16"]) == 0
    llm16 = llama(half, model.config.block_size, logits_all=True, type_k=f32, type_v=f32)
    llm16.eval(ids)
    theirs16 = np.asarray(llm16.scores[: len(ids)], dtype=np.float64)
    products = sum(isinstance(m, nn.Linear) for m in model.modules())
    assert np.abs(theirs16 - ours).max() <= 4 * F16_UNIT * products * np.abs(ours).max() + tolerance
