"""Export a train_bpe.py checkpoint as a GGUF file for llama.cpp, ollama and LM Studio.

    python export_gguf.py --ckpt bpe_best.pt --out model.gguf

The file holds the weights under llama.cpp's "gpt2" architecture (our layout is GPT-2's) and the
byte-level BPE tokenizer (tokens, merges, special ids), so llama.cpp and the programs built on it run
the model with no other file. Writing needs the gguf package (requirements-extra.txt). The positions
are learned, so llama.cpp cannot go past block_size tokens (sample_bpe.py shifts its context instead).
"""

from __future__ import annotations

import signal
import sys

if __name__ == "__main__":  # Ctrl-C while the imports below load (a second or two): leave without a traceback
    signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(128 + signum))

import argparse
import json
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
from model import GPT

EXAMPLES = """examples:
  python export_gguf.py --ckpt bpe_best.pt --out model.gguf
  python export_gguf.py --ckpt bpe_best.pt --out model-f16.gguf --outtype f16   # half the size
  python export_gguf.py --ckpt out/bpe_best.pt --out model.gguf --overwrite     # replace an earlier export
"""

GGUF_INSTALL_HINT = "pip install gguf==0.19.0 (or pip install -r requirements-extra.txt)"
OUTTYPES = ("f32", "f16")

# Our parameter names -> llama.cpp's for architecture "gpt2": gguf-py's constants.py (MODEL_TENSOR names listed
# for MODEL_ARCH.GPT2), loaded by llama.cpp's src/models/gpt2.cpp. lm_head.weight is wte itself (tied) and is
# left out: llama.cpp's gpt2 uses token_embd for the output layer when output.weight is absent.
# No weight is transposed: nn.Linear stores (out, in), and a row-major (out, in) array is GGUF's ne = [in, out],
# the shape llama.cpp asks for (attn_qkv {n_embd, 3 n_embd}). llama.cpp's own converter (conversion/gpt2.py)
# transposes only because it starts from Hugging Face's Conv1D weights, which are (in, out).
GLOBAL_NAMES = {
    "transformer.wte.weight": "token_embd.weight",
    "transformer.wpe.weight": "position_embd.weight",
    "transformer.ln_f.weight": "output_norm.weight",
    "transformer.ln_f.bias": "output_norm.bias",
}
BLOCK_NAMES = {  # transformer.h.{i}.<ours>.{weight,bias} -> blk.{i}.<theirs>.{weight,bias}
    "ln_1": "attn_norm",
    "attn.c_attn": "attn_qkv",  # q, k, v fused in this order, as llama.cpp splits it
    "attn.c_proj": "attn_output",
    "ln_2": "ffn_norm",
    "mlp.c_fc": "ffn_up",
    "mlp.c_proj": "ffn_down",
}
TIED = "lm_head.weight"


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


# --------------------------------------------------------------------------- what GGUF's gpt2 can hold


def check_gpt2_compatible(config: dict, ckpt) -> None:
    """Raises ExportError for a model llama.cpp's gpt2 cannot reproduce exactly."""
    if model.architecture(config) != "gpt2":
        raise ExportError(f"checkpoint {ckpt} was trained with {model.unusual_options(config)}, which llama.cpp's "
                          f"gpt2 architecture does not have; it cannot be exported as GGUF")


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


def gguf_name(name: str) -> str | None:
    """llama.cpp's name for one of our parameters; None for the tied output layer."""
    if name == TIED:
        return None
    if name in GLOBAL_NAMES:
        return GLOBAL_NAMES[name]
    _, _, layer, rest = name.split(".", 3)  # transformer.h.{i}.{module}.{weight|bias}
    module, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{BLOCK_NAMES[module]}.{kind}"


def stored_dtype(name: str, ndim: int, outtype: str) -> np.dtype:
    """f16 for the weight matrices when asked; as llama.cpp's converter (conversion/base.py), norms, biases
    (1-D) and the position table stay f32."""
    if outtype == "f16" and ndim == 2 and name != "position_embd.weight":
        return np.dtype(np.float16)
    return np.dtype(np.float32)


def gguf_tensors(weights: dict, outtype: str) -> list[tuple[str, torch.Tensor, np.dtype]]:
    """(llama.cpp name, our tensor, the dtype stored) for every tensor the file holds, in our order."""
    out = []
    for name, tensor in weights.items():
        target = gguf_name(name)
        if target is not None:
            out.append((target, tensor, stored_dtype(target, tensor.ndim, outtype)))
    return out


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


def build_writer(gguf, state: dict, tok, specials: tokenizer.SpecialIds, outtype: str, tensors):
    """A GGUFWriter holding every key and tensor description; the tensor data follow when writing."""
    config = state["config"]
    with torch.device("meta"):  # the LayerNorm epsilon model.py really uses, without building weights
        eps = GPT(model_config(config)).transformer.ln_f.eps
    writer = gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.GPT2])
    writer.add_context_length(config["block_size"])
    writer.add_embedding_length(config["n_embed"])
    writer.add_block_count(config["n_layer"])
    writer.add_head_count(config["n_head"])
    writer.add_feed_forward_length(4 * config["n_embed"])  # our MLP, as GPT-2's
    writer.add_layer_norm_eps(eps)
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


def export(ckpt, out: Path, outtype: str = "f32", overwrite: bool = False) -> tuple[Path, int]:
    """Writes the GGUF file; returns its path and the number of tensors in it."""
    state = load_checkpoint(ckpt)
    check_gpt2_compatible(state["config"], ckpt)
    if state.get("tokenizer_type", "bpe") != "bpe":
        raise ExportError(f"checkpoint {ckpt} uses a {state['tokenizer_type']} tokenizer; GGUF's gpt2 needs "
                          f"byte-level BPE, so only BPE checkpoints can be exported")
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

    tensors = gguf_tensors(state["model"], outtype)
    writer = build_writer(gguf, state, tok, specials, outtype, tensors)
    try:
        blocker = next((p for p in (out.parent, *out.parent.parents) if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise NotADirectoryError(20, f"{blocker} is a file, not a folder", str(blocker))
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, lambda tmp: write_file(writer, tensors, tmp, out.name), by_name=True)
    except OSError as exc:
        raise ExportError(f"--out {out} cannot be written ({reason(exc)}): {advice(exc)}") from None
    return out, len(tensors)


def main(argv=None) -> int:
    signal.signal(signal.SIGINT, signal.default_int_handler)
    cli.prepare_streams()
    args = build_parser().parse_args(argv)
    try:
        out, count = export(args.ckpt, args.out, args.outtype, args.overwrite)
    except (ExportError, CheckpointError, data.DataError) as exc:
        print(f"export_gguf.py: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the temporary file is gone; --out is as it was
        print("\nexport_gguf.py: interrupted; --out was left as it was", file=sys.stderr)
        return 130
    size = out.stat().st_size
    print(f"exported {args.ckpt} to {out} (llama.cpp architecture gpt2, {args.outtype}, {count} tensors, "
          f"{size / 1e6:,.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
