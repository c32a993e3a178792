"""Export a train_bpe.py checkpoint as a GGUF file for llama.cpp, ollama and LM Studio.

    python export_gguf.py --ckpt bpe_best.pt --out model.gguf

The file holds the weights under the llama.cpp architecture that computes what the model does: "gpt2"
for the default layout (GPT-2's), "llama" for rotary + RMSNorm + SwiGLU without biases (--preset cpu),
"qwen3" for that with QK-norm; any other mix of layout options is refused. It also holds the byte-level
BPE tokenizer (tokens, merges, special ids), so llama.cpp and the programs built on it run the model with
no other file. Writing needs the gguf package (requirements-extra.txt). A gpt2 model's positions are
learned, so llama.cpp cannot go past block_size tokens there (sample_bpe.py shifts its context instead).
"""

from __future__ import annotations

import signal
import sys

if __name__ == "__main__":  # Ctrl-C while the imports below load (a second or two): leave without a traceback
    signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(128 + signum))

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import cli
import data
import model
import tokenizer
from checkpoint import CheckpointError, embedded_tokenizer, load_checkpoint, model_config
from files import advice, atomic_write, reason
from model import GPT, GPTConfig

EXAMPLES = """examples:
  python export_gguf.py --ckpt bpe_best.pt --out model.gguf
  python export_gguf.py --ckpt bpe_best.pt --out model-f16.gguf --outtype f16   # half the size
  python export_gguf.py --ckpt out/bpe_best.pt --out model.gguf --overwrite     # replace an earlier export
"""

GGUF_INSTALL_HINT = "pip install gguf==0.19.0 (or pip install -r requirements-extra.txt)"
OUTTYPES = ("f32", "f16")

# --------------------------------------------------------------------------- the architectures


@dataclass(frozen=True)
class Architecture:
    """One of llama.cpp's architectures: where our parameters go in it, and which hyperparameters it stores."""

    # Our module -> llama.cpp's tensor(s), "{i}" the block; the .weight / .bias suffix carries over. Several
    # names: the module's rows, split evenly among them in this order (our fused q|k|v and gate|up matrices).
    tensors: dict[str, tuple[str, ...]]
    keys: tuple[str, ...]  # the hyperparameters() it stores, each written by GGUFWriter.add_<key>
    # True where llama.cpp rotates adjacent dimensions (2i, 2i+1) of a head (its rope type NORM) while we rotate
    # (i, i + hs/2) (model.rotate): the rows of the query and key matrices are reordered (adjacent_pairs).
    adjacent_rope_pairs: bool = False


# Names: gguf-py's constants.py (MODEL_TENSORS of MODEL_ARCH.GPT2 / LLAMA / QWEN3), as llama.cpp's converter maps
# Hugging Face's names (tests check both tables against gguf-py's). No weight is transposed: nn.Linear stores
# (out, in), and a row-major (out, in) array is GGUF's ne = [in, out], the shape llama.cpp asks for
# (attn_qkv {n_embd, 3 n_embd}); its converter transposes GPT-2 only because Hugging Face's Conv1D is (in, out).
# A tied output layer is the token embedding itself and is left out: all three architectures then use
# token_embd as the output layer (llama.cpp's src/models/*.cpp).
GPT2 = Architecture(
    tensors={
        "transformer.wte": ("token_embd",),
        "transformer.wpe": ("position_embd",),
        "transformer.h.{i}.ln_1": ("blk.{i}.attn_norm",),
        "transformer.h.{i}.attn.c_attn": ("blk.{i}.attn_qkv",),  # q, k, v fused in this order, as llama.cpp splits it
        "transformer.h.{i}.attn.c_proj": ("blk.{i}.attn_output",),
        "transformer.h.{i}.ln_2": ("blk.{i}.ffn_norm",),
        "transformer.h.{i}.mlp.c_fc": ("blk.{i}.ffn_up",),
        "transformer.h.{i}.mlp.c_proj": ("blk.{i}.ffn_down",),
        "transformer.ln_f": ("output_norm",),
    },
    keys=("context_length", "embedding_length", "block_count", "head_count", "feed_forward_length",
          "layer_norm_eps"),
)
LLAMA = Architecture(
    tensors={
        "transformer.wte": ("token_embd",),
        "transformer.h.{i}.ln_1": ("blk.{i}.attn_norm",),
        "transformer.h.{i}.attn.c_attn": ("blk.{i}.attn_q", "blk.{i}.attn_k", "blk.{i}.attn_v"),
        "transformer.h.{i}.attn.c_proj": ("blk.{i}.attn_output",),
        "transformer.h.{i}.ln_2": ("blk.{i}.ffn_norm",),
        "transformer.h.{i}.mlp.c_fc": ("blk.{i}.ffn_gate", "blk.{i}.ffn_up"),  # SwiGLU: silu(gate) * up
        "transformer.h.{i}.mlp.c_proj": ("blk.{i}.ffn_down",),
        "transformer.ln_f": ("output_norm",),
        "lm_head": ("output",),  # an untied head only
    },
    # What llama.cpp's converter writes for LlamaForCausalLM (TextModel and LlamaModel.set_gguf_parameters).
    keys=("context_length", "embedding_length", "block_count", "feed_forward_length", "head_count", "head_count_kv",
          "rope_freq_base", "layer_norm_rms_eps", "vocab_size", "rope_dimension_count"),
    # llama.cpp's llama rotates adjacent pairs; its converter reorders the rows of Hugging Face's q_proj and
    # k_proj, which rotate halves as we do (LlamaModel.permute in convert_hf_to_gguf.py, conversion/llama.py).
    adjacent_rope_pairs=True,
)
QWEN3 = Architecture(
    tensors=LLAMA.tensors | {
        "transformer.h.{i}.attn.q_norm": ("blk.{i}.attn_q_norm",),
        "transformer.h.{i}.attn.k_norm": ("blk.{i}.attn_k_norm",),
    },
    # The converter's Qwen3Model adds nothing to TextModel's keys; the rotated dimensions are stated all the same.
    keys=("context_length", "embedding_length", "block_count", "feed_forward_length", "head_count", "head_count_kv",
          "rope_freq_base", "layer_norm_rms_eps", "rope_dimension_count"),
    # llama.cpp's qwen3 rotates halves (rope type NEOX), as we do: its converter (Qwen3Model) reorders nothing.
    adjacent_rope_pairs=False,
)
ARCHITECTURES = {"gpt2": GPT2, "llama": LLAMA, "qwen3": QWEN3}  # by model.architecture()'s names, also llama.cpp's


class ExportError(Exception):
    """A checkpoint or output path this export cannot handle: shown as one line."""


def build_parser() -> argparse.ArgumentParser:
    p = cli.OneLineParser(
        prog="export_gguf.py", description=__doc__.splitlines()[0], epilog=EXAMPLES,
        formatter_class=cli.HelpFormatter,
    )
    p.add_argument("--ckpt", default="bpe_best.pt", help="checkpoint written by train_bpe.py")
    p.add_argument("--out", type=Path, required=True, help="the .gguf file to write")
    p.add_argument("--outtype", choices=OUTTYPES, default="f32",
                   help="f16 stores the weight matrices in half precision (half the size); norms and biases stay f32")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it already exists")
    return p


# --------------------------------------------------------------------------- what GGUF can hold


def gguf_architecture(config: dict, ckpt) -> str:
    """The llama.cpp architecture that computes what this (saved) config does; ExportError if none does."""
    name = model.architecture(config)
    if name is None:  # llama.cpp's gpt2, llama and qwen3 are those layouts
        raise ExportError(f"checkpoint {ckpt} {model.unexportable(config)}, so it cannot be exported as GGUF")
    return name


def check_gpt2_tokenizer(spec: dict, ckpt) -> None:
    """Refuses a byte-level BPE that splits text differently from GPT-2's: llama.cpp would tokenize it otherwise.

    tokenizer.ggml.pre "gpt-2" selects GPT-2's regex split (llama.cpp src/llama-vocab.cpp), which is what
    ByteLevel(add_prefix_space=False, use_regex=True) does, with no normalizer and plain merges.
    """
    pre, bpe = spec.get("pre_tokenizer") or {}, spec.get("model") or {}
    gpt2_split = (pre.get("type") == "ByteLevel" and not pre.get("add_prefix_space", True)
                  and pre.get("use_regex", True))
    extras = spec.get("normalizer") or any(bpe.get(k) for k in (
        "byte_fallback", "ignore_merges", "continuing_subword_prefix", "end_of_word_suffix", "dropout"))
    if not gpt2_split or extras:
        raise ExportError(f"checkpoint {ckpt} has a tokenizer that does not split text as GPT-2's does (ByteLevel "
                          f"pre-tokenizer without a prefix space, no normalizer); llama.cpp would tokenize "
                          f"differently, so it cannot be exported as GGUF")


# --------------------------------------------------------------------------- weights


def gguf_names(name: str, arch: Architecture) -> tuple[str, ...]:
    """llama.cpp's name(s) for one of our parameters; several: its rows split evenly among them, in order."""
    module, kind = name.rsplit(".", 1)  # e.g. transformer.h.3.attn.c_attn, weight
    parts = module.split(".")
    layer = parts[2] if parts[:2] == ["transformer", "h"] else None
    if layer is not None:
        parts[2] = "{i}"
    return tuple(f"{target.format(i=layer)}.{kind}" for target in arch.tensors[".".join(parts)])


def adjacent_pairs(rows: torch.Tensor, n_head: int) -> torch.Tensor:
    """A query or key matrix (n_head * hs, C) with each head's rows reordered so that the dimensions we rotate
    together, i and i + hs/2, become dimensions 2i and 2i + 1, the pairs llama.cpp's rope type NORM rotates.
    The angle of pair i, position x theta^(-2i/hs), is the same on both sides, and q and k move alike, so every
    attention score is unchanged."""
    hs = rows.shape[0] // n_head
    halves = rows.reshape(n_head, 2, hs // 2, *rows.shape[1:])  # (nh, half, i, C): row h hs + half hs/2 + i
    return halves.transpose(1, 2).reshape(rows.shape)  # row h hs + 2 i + half


def stored_dtype(name: str, ndim: int, outtype: str) -> np.dtype:
    """f16 for the weight matrices when asked; as llama.cpp's converter (conversion/base.py), norms, biases
    (1-D) and the position table stay f32."""
    if outtype == "f16" and ndim == 2 and name != "position_embd.weight":
        return np.dtype(np.float16)
    return np.dtype(np.float32)


def gguf_tensors(weights: dict, config: dict, arch: Architecture, outtype: str):
    """(llama.cpp name, the tensor it holds, the dtype stored) for every tensor the file holds, in our order."""
    out = []
    for name, tensor in weights.items():
        if name == "lm_head.weight" and config.get("tie_embeddings", True):
            continue  # the token embedding itself
        targets = gguf_names(name, arch)
        for target, rows in zip(targets, tensor.chunk(len(targets))):  # (3C, C) -> q, k, v; (2h, C) -> gate, up
            if arch.adjacent_rope_pairs and target.endswith((".attn_q.weight", ".attn_k.weight")):
                rows = adjacent_pairs(rows, config["n_head"])
            out.append((target, rows, stored_dtype(target, rows.ndim, outtype)))
    return out


def hyperparameters(cfg: GPTConfig, eps: float) -> dict[str, int | float]:
    """Every hyperparameter an Architecture may store, by its GGUFWriter.add_<key> name."""
    return {
        "context_length": cfg.block_size,  # learned positions: all there are; rotary: the longest context trained
        "embedding_length": cfg.n_embed,
        "block_count": cfg.n_layer,
        "head_count": cfg.n_head,
        "head_count_kv": cfg.n_head,  # no grouped-query attention
        "feed_forward_length": cfg.mlp_hidden,  # GELU's 4 x n_embed, or SwiGLU's width of gate and of up
        "layer_norm_eps": eps,
        "layer_norm_rms_eps": eps,
        "rope_freq_base": float(cfg.rope_theta),
        "rope_dimension_count": cfg.n_embed // cfg.n_head,  # every dimension of a head rotates
        "vocab_size": cfg.vocab_size,
    }


# --------------------------------------------------------------------------- tokenizer


def vocabulary(tok, vocab_size: int, token_type) -> tuple[list[str], list[int]]:
    """Every token string in id order with its type, one per embedding row.

    Specials are control tokens (llama.cpp prints them only when asked to, and finds them in text only when
    parsing specials, as its completion tool does for prompts); rows the model has beyond the tokenizer get
    unused placeholders, as llama.cpp's converter writes them ("[PAD{id}]").
    """
    by_id = {i: t for t, i in tok.get_vocab(with_added_tokens=True).items()}
    added = tok.get_added_tokens_decoder()
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(token_type.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(token_type.CONTROL if added[i].special else token_type.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(token_type.NORMAL)
    return tokens, types


def merges(spec: dict) -> list[str]:
    """The merges in rank order as "left right" (tokenizers writes pairs as lists since 0.20, as strings before)."""
    return [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]


# --------------------------------------------------------------------------- the file


def build_writer(gguf, arch_name: str, state: dict, tok, specials: tokenizer.SpecialIds, outtype: str, tensors):
    """A GGUFWriter holding every key and tensor description; the tensor data follow when writing."""
    config = state["config"]
    with torch.device("meta"):  # the model as model.py builds it (its norms' epsilon), without weights
        cfg = model_config(config)
        eps = GPT(cfg).transformer.ln_f.eps
    writer = gguf.GGUFWriter(None, arch_name)
    values = hyperparameters(cfg, eps)
    for key in ARCHITECTURES[arch_name].keys:
        getattr(writer, f"add_{key}")(values[key])
    file_types = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16}
    writer.add_file_type(file_types[outtype])

    spec = json.loads(tok.to_str())
    tokens, types = vocabulary(tok, config["vocab_size"], gguf.TokenType)
    writer.add_tokenizer_model("gpt2")  # byte-level BPE
    writer.add_tokenizer_pre("gpt-2")  # GPT-2's regex split (check_gpt2_tokenizer)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges(spec))
    writer.add_bos_token_id(specials.start)
    writer.add_eos_token_id(specials.eos)
    if specials.pad is not None:
        writer.add_pad_token_id(specials.pad)
    if specials.unk is not None:
        writer.add_unk_token_id(specials.unk)
    # Our prompts are encoded without specials (sample_bpe.py): no <bos> or <eos> added around them.
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)

    for name, tensor, dtype in tensors:
        writer.add_tensor_info(name, tuple(tensor.shape), dtype, tensor.numel() * dtype.itemsize)
    return writer


def write_file(writer, tensors, tmp: Path, shown: str) -> None:
    """Writes header, keys, tensor descriptions and data to tmp, converting one tensor at a time."""
    total = sum(tensor.numel() * dtype.itemsize for _, tensor, dtype in tensors)
    try:
        writer.write_header_to_file(tmp)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        # delay: a small model is written before a bar would be worth showing
        with tqdm(total=total, desc=f"writing {shown}", unit="B", unit_scale=True, leave=False, delay=1.0) as bar:
            for _, tensor, dtype in tensors:
                array = tensor.detach().to(torch.float32).numpy().astype(dtype)
                writer.write_tensor_data(array)
                bar.update(array.nbytes)
    finally:
        writer.close()


def export(ckpt, out: Path, outtype: str = "f32", overwrite: bool = False) -> tuple[Path, str, int]:
    """Writes the GGUF file; returns its path, its llama.cpp architecture and the number of tensors in it."""
    state = load_checkpoint(ckpt)
    arch_name = gguf_architecture(state["config"], ckpt)
    if state.get("tokenizer_type", "bpe") != "bpe":
        raise ExportError(f"checkpoint {ckpt} uses a {state['tokenizer_type']} tokenizer; this export writes "
                          f"GGUF's byte-level BPE tokenizer, so only BPE checkpoints can be exported")
    try:
        import gguf
    except ImportError:
        raise ExportError(f"export_gguf.py needs the gguf package: {GGUF_INSTALL_HINT}") from None
    out = Path(out)
    if out.is_dir():
        raise ExportError(f"--out {out} is a folder: pass a file path such as {out / 'model.gguf'}")
    if out.exists():
        if out.samefile(ckpt):
            raise ExportError(f"--out {out} is the checkpoint itself: pick another path")
        if not overwrite:
            raise ExportError(f"--out {out} already exists: pass --overwrite to replace it, or another path")
    tok = embedded_tokenizer(state, f"--ckpt {ckpt}")
    check_gpt2_tokenizer(json.loads(tok.to_str()), ckpt)
    specials = tokenizer.checkpoint_special_ids(state, tok)

    tensors = gguf_tensors(state["model"], state["config"], ARCHITECTURES[arch_name], outtype)
    writer = build_writer(gguf, arch_name, state, tok, specials, outtype, tensors)
    try:
        blocker = next((p for p in (out.parent, *out.parent.parents) if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise NotADirectoryError(20, f"{blocker} is a file, not a folder", str(blocker))
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, lambda tmp: write_file(writer, tensors, tmp, out.name), by_name=True)
    except OSError as exc:
        raise ExportError(f"--out {out} cannot be written ({reason(exc)}): {advice(exc)}") from None
    return out, arch_name, len(tensors)


def main(argv=None) -> int:
    signal.signal(signal.SIGINT, signal.default_int_handler)
    cli.prepare_streams()
    args = build_parser().parse_args(argv)
    try:
        out, arch_name, count = export(args.ckpt, args.out, args.outtype, args.overwrite)
    except (ExportError, CheckpointError, data.DataError) as exc:
        print(f"export_gguf.py: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the temporary file is gone; --out is as it was
        print("\nexport_gguf.py: interrupted; --out was left as it was", file=sys.stderr)
        return 130
    size = out.stat().st_size
    print(f"exported {args.ckpt} to {out} (llama.cpp architecture {arch_name}, {args.outtype}, {count} tensors, "
          f"{size / 1e6:,.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
