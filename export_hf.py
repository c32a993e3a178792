"""Export a train_bpe.py checkpoint as a Hugging Face transformers model folder (GPT-2, Llama or Qwen3).

    python export_hf.py --ckpt bpe_best.pt --out hf_model/

The folder holds config.json, generation_config.json, model.safetensors and the tokenizer
(tokenizer.json, tokenizer_config.json, special_tokens_map.json), so
``transformers.pipeline("text-generation", model="hf_model")`` loads it. Writing needs only the
safetensors package; loading it needs transformers (both in requirements-extra.txt).
The GPT-2 layout exports as ``GPT2LMHeadModel``; rotary + RMSNorm + SwiGLU without biases as
``LlamaForCausalLM``, and with QK-norm as ``Qwen3ForCausalLM`` (the architectures llama.cpp's
converter knows as llama and qwen3). Any other mix of layout options is refused.
"""

from __future__ import annotations

import signal
import sys

if __name__ == "__main__":  # Ctrl-C while the imports below load (a second or two): leave without a traceback
    signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(128 + signum))

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import cli
import data
import model
import tokenizer
from checkpoint import CheckpointError, embedded_tokenizer, load_checkpoint
from files import advice, reason

EXAMPLES = """examples:
  python export_hf.py --ckpt bpe_best.pt --out hf_model/
  python export_hf.py --ckpt out/bpe_best.pt --out hf_model/ --overwrite   # replace an earlier export
  python -c "from transformers import pipeline; print(pipeline('text-generation', model='hf_model')('ROMEO:', max_new_tokens=40)[0]['generated_text'])"
"""

# Our layers are nn.Linear (weight: out x in); GPT-2's are Conv1D (weight: in x out), so these are transposed.
CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
OUTPUT_FILES = ("config.json", "generation_config.json", "model.safetensors",
                "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


class ExportError(Exception):
    """A checkpoint or output folder this export cannot handle: shown as one line."""


def build_parser() -> argparse.ArgumentParser:
    p = cli.OneLineParser(
        prog="export_hf.py", description=__doc__.splitlines()[0], epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--ckpt", default="bpe_best.pt", help="checkpoint written by train_bpe.py")
    p.add_argument("--out", type=Path, required=True, help="folder to write the Hugging Face model into")
    p.add_argument("--overwrite", action="store_true", help="replace the export files in an --out that is not empty")
    return p


def architecture(config: dict, ckpt) -> str:
    """"gpt2", "llama" or "qwen3" (model.architecture); ExportError for a layout none of them has."""
    name = model.architecture(config)
    if name is None:
        raise ExportError(f"checkpoint {ckpt} {model.unexportable(config)}, so it cannot be exported")
    return name


def special_tokens(tok, specials: tokenizer.SpecialIds) -> dict[str, str]:
    """special_tokens_map.json: the names of the tokenizer's own specials ("<eos>", or GPT-2's "<|endoftext|>")."""
    ids = {"pad_token": specials.pad, "unk_token": specials.unk, "bos_token": specials.start,
           "eos_token": specials.eos}
    return {name: tok.id_to_token(i) for name, i in ids.items() if i is not None}


def hf_config(config: dict, specials: tokenizer.SpecialIds) -> dict:
    """config.json for the architecture() of this config."""
    if model.architecture(config) == "gpt2":
        return gpt2_config(config, specials)
    return llama_config(config, specials)


def gpt2_config(config: dict, specials: tokenizer.SpecialIds) -> dict:
    """config.json for GPT2LMHeadModel: GELU tanh = "gelu_new", LayerNorm eps 1e-5, learned positions."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config["vocab_size"],
        "n_positions": config["block_size"],
        "n_embd": config["n_embed"],
        "n_layer": config["n_layer"],
        "n_head": config["n_head"],
        "n_inner": None,  # 4 x n_embd, as our MLP
        "activation_function": "gelu_new",
        "layer_norm_epsilon": model.NORM_EPS,
        "resid_pdrop": config["dropout"],
        "embd_pdrop": config["dropout"],
        "attn_pdrop": model.GPTConfig(**config).attention_dropout,
        "scale_attn_weights": True,  # 1/sqrt(head size), as scaled_dot_product_attention
        "tie_word_embeddings": True,
        "initializer_range": 0.02,
        **generation_ids(specials),
        "use_cache": True,
    }


def llama_config(config: dict, specials: tokenizer.SpecialIds) -> dict:
    """config.json for LlamaForCausalLM or Qwen3ForCausalLM (QK-norm): no grouped-query attention (as many
    key/value heads as heads), SiLU-gated MLP, RMSNorm eps 1e-5, rotary positions in the rotate-half layout."""
    qwen3 = model.architecture(config) == "qwen3"
    cfg = model.GPTConfig(**config)
    return {
        "architectures": ["Qwen3ForCausalLM" if qwen3 else "LlamaForCausalLM"],
        "model_type": "qwen3" if qwen3 else "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.n_embed,
        "intermediate_size": cfg.mlp_hidden,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_head,
        "head_dim": cfg.n_embed // cfg.n_head,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.block_size,
        "rms_norm_eps": model.NORM_EPS,
        # transformers 5 reads rope_parameters, 4.x and llama.cpp's converter rope_theta: both say the same.
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": 0.02,
        **generation_ids(specials),
        "use_cache": True,
    }


def hf_state_dict(state_dict: dict, config: dict) -> dict:
    """Our weights under the Hugging Face names of the architecture() of config."""
    if model.architecture(config) == "gpt2":
        return gpt2_state_dict(state_dict)
    return llama_state_dict(state_dict, config)


def gpt2_state_dict(state_dict: dict) -> dict:
    """Our weights under GPT-2's names (the same ones), Conv1D weights transposed, lm_head left to the tie."""
    out = {}
    for name, tensor in state_dict.items():
        if name == "lm_head.weight":
            continue  # the same tensor as transformer.wte.weight; safetensors stores no shared tensors
        out[name] = (tensor.t() if name.endswith(CONV1D_SUFFIXES) else tensor).contiguous()
    return out


def llama_state_dict(state_dict: dict, config: dict) -> dict:
    """Our weights under Llama's / Qwen3's names: the fused q|k|v and gate|up matrices split in their rows."""
    cfg = model.GPTConfig(**config)
    C, hidden = cfg.n_embed, cfg.mlp_hidden
    out = {"model.embed_tokens.weight": state_dict["transformer.wte.weight"],
           "model.norm.weight": state_dict["transformer.ln_f.weight"]}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = state_dict["lm_head.weight"]
    for i in range(cfg.n_layer):
        ours, theirs = f"transformer.h.{i}.", f"model.layers.{i}."
        q, k, v = state_dict[ours + "attn.c_attn.weight"].split(C)
        gate, up = state_dict[ours + "mlp.c_fc.weight"].split(hidden)
        out |= {
            theirs + "input_layernorm.weight": state_dict[ours + "ln_1.weight"],
            theirs + "self_attn.q_proj.weight": q,
            theirs + "self_attn.k_proj.weight": k,
            theirs + "self_attn.v_proj.weight": v,
            theirs + "self_attn.o_proj.weight": state_dict[ours + "attn.c_proj.weight"],
            theirs + "post_attention_layernorm.weight": state_dict[ours + "ln_2.weight"],
            theirs + "mlp.gate_proj.weight": gate,
            theirs + "mlp.up_proj.weight": up,
            theirs + "mlp.down_proj.weight": state_dict[ours + "mlp.c_proj.weight"],
        }
        if cfg.qk_norm:
            out[theirs + "self_attn.q_norm.weight"] = state_dict[ours + "attn.q_norm.weight"]
            out[theirs + "self_attn.k_norm.weight"] = state_dict[ours + "attn.k_norm.weight"]
    return {name: tensor.contiguous() for name, tensor in out.items()}


def generation_ids(specials: tokenizer.SpecialIds) -> dict[str, int]:
    ids = {"bos_token_id": specials.start, "eos_token_id": specials.eos}
    return ids | ({"pad_token_id": specials.pad} if specials.pad is not None else {})


def tokenizer_files(tok, block_size: int, specials: tokenizer.SpecialIds) -> dict[str, str]:
    names = special_tokens(tok, specials)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": block_size,
        "clean_up_tokenization_spaces": False,  # byte-level BPE already round-trips exactly
        **names,
    }
    return {
        "tokenizer.json": tok.to_str(),
        "tokenizer_config.json": json.dumps(config, indent=2),
        "special_tokens_map.json": json.dumps(names, indent=2),
    }


def export(ckpt, out: Path, overwrite: bool = False) -> Path:
    state = load_checkpoint(ckpt)
    architecture(state["config"], ckpt)
    if state.get("tokenizer_type", "bpe") != "bpe":
        raise ExportError(f"checkpoint {ckpt} uses a {state['tokenizer_type']} tokenizer; only byte-level BPE "
                          f"checkpoints can be exported for now")
    try:
        import safetensors.torch  # noqa: F401
    except ImportError:
        raise ExportError("export needs the safetensors package: pip install -r requirements-extra.txt") from None
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file: pass a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"--out {out} is not empty: pass --overwrite to replace the export files in it, or another folder")
    tok = embedded_tokenizer(state, f"--ckpt {ckpt}")
    specials = tokenizer.checkpoint_special_ids(state, tok)

    try:
        write_folder(state, tok, specials, out)
    except OSError as exc:
        raise ExportError(f"--out {out} cannot be written ({reason(exc)}): {advice(exc)}") from None
    return out


def write_folder(state: dict, tok, specials: tokenizer.SpecialIds, out: Path) -> None:
    """Writes the export into a temporary folder beside out, then moves the files in: a failure leaves out as it was."""
    from safetensors.torch import save_file

    blocker = next((p for p in (out.parent, *out.parent.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise NotADirectoryError(20, f"{blocker} is a file, not a folder", str(blocker))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        save_file(hf_state_dict(state["model"], state["config"]), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        texts = {
            "config.json": json.dumps(hf_config(state["config"], specials), indent=2),
            "generation_config.json": json.dumps(generation_ids(specials), indent=2),
            **tokenizer_files(tok, state["config"]["block_size"], specials),
        }
        for name, text in texts.items():
            (tmp / name).write_text(text + "\n", encoding="utf-8")
        out.mkdir(exist_ok=True)
        for name in OUTPUT_FILES:
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None) -> int:
    signal.signal(signal.SIGINT, signal.default_int_handler)
    cli.prepare_streams()
    args = build_parser().parse_args(argv)
    try:
        out = export(args.ckpt, args.out, args.overwrite)
    except (ExportError, CheckpointError, data.DataError) as exc:
        print(f"export_hf.py: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the temporary folder is gone; --out is as it was
        print("\nexport_hf.py: interrupted; --out was left as it was", file=sys.stderr)
        return 130
    print(f"exported {args.ckpt} to {out}/ ({', '.join(OUTPUT_FILES)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
