"""Where a fine-tuning run starts (``--init_from``): one of our checkpoints, a Hugging Face GPT-2 folder, or a hub name.
A teacher to distil (``--distill_from``) is loaded the same way.

    source = load_source("gpt2")               # downloaded once into the Hugging Face cache
    source = load_source("~/models/distilgpt2")  # config.json + model.safetensors + tokenizer.json
    source = load_source("out/bpe_best.pt")    # our own checkpoint

A source gives the model's shape, its weights (under our parameter names) and its tokenizer; the run
then trains from step 0 with a fresh optimizer. A Hugging Face GPT-2 is the inverse of export_hf.py:
GPT-2 stores its attention and MLP weights as ``Conv1D`` (in x out), ours are ``nn.Linear`` (out x in).
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

import schedule
import tokenizer
from checkpoint import CheckpointError, embedded_tokenizer, load_checkpoint, model_config
from model import GPT, LAYOUT_FIELDS, GPTConfig

HUB_HINT = "pip install huggingface_hub (or pip install -r requirements-extra.txt)"
HUB_FILES = ["config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json"]
CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
GPT2_GELUS = ("gelu_new", "gelu_pytorch_tanh")  # both are GELU's tanh approximation, as our MLP
SHAPE_FLAGS = ("n_layer", "n_head", "n_embed", "vocab_size")  # fixed by the source: a typed other value is an error
TOKENIZER_FLAGS = ("tokenizer", "tokenizer_type", "min_frequency")  # the source's tokenizer is used as it is

# Defaults for a run that starts from a model that knows language already, measured with bench/finetune.py
# (bench/RESULTS.md, "Fine-tuning"): a lower learning rate than from scratch (large steps would wreck what
# the model knows), AdamW (Muon's orthogonalised steps move every direction of a pretrained matrix
# equally), a short warmup, and evaluations often enough to catch the best point of a short run.
# A flag typed on the command line wins; these win over --preset's values.
FINETUNE_DEFAULTS = dict(
    optimizer="adamw", lr=3e-4, warmup_steps=50, min_lr_factor=0.1, use_cosine=True, weight_decay=0.1,
    dropout=0.0, eval_interval=100,
)


class SourceError(CheckpointError):
    """An --init_from or --distill_from model that cannot be used: missing, of another kind, or needing a package."""


@dataclass(frozen=True)
class Source:
    """A model to start from: its shape, weights (our names), tokenizer and where it came from."""

    name: str  # as the user typed it
    kind: str  # "checkpoint", "hf_folder" or "hub"
    path: Path  # the .pt file or the model folder
    config: GPTConfig
    weights: dict
    tok: object
    tok_path: Path

    def record(self) -> dict:
        """What a checkpoint and metrics.jsonl say about where the run started."""
        return {"source": self.name, "kind": self.kind, "path": str(self.path)}

    def describe(self) -> str:
        c = self.config
        what = {"checkpoint": "our checkpoint", "hf_folder": "Hugging Face GPT-2 folder",
                "hub": "Hugging Face GPT-2 from the hub"}[self.kind]
        return (f"{what} {self.path}: {c.n_layer} layers x {c.n_embed}, {c.n_head} heads, context {c.block_size}, "
                f"vocabulary {c.vocab_size}")


# --------------------------------------------------------------------------- finding the source


def load_source(name: str, flag: str = "--init_from") -> Source:
    """Our checkpoint (a file), a Hugging Face folder, or a hub name (downloaded once); SourceError, naming flag,
    otherwise."""
    path = Path(name).expanduser()
    if path.is_file():
        return from_checkpoint(name, path, flag)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SourceError(f"{flag} {name} is a folder without config.json: pass a Hugging Face model "
                              f"folder (config.json, model.safetensors, tokenizer.json) or a .pt checkpoint")
        return from_hf_folder(name, path, "hf_folder", flag)
    if looks_like_hub_name(name):
        return from_hf_folder(name, hub_download(name, flag), "hub", flag)
    raise SourceError(f"{flag} {name} does not exist: pass a .pt checkpoint, a Hugging Face model folder or "
                      f"a hub name such as gpt2")


def looks_like_hub_name(name: str) -> bool:
    """gpt2, distilgpt2, openai-community/gpt2: a name, not a path (no ./, ~/, /, .pt)."""
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", name)) and not name.endswith((".pt", ".json"))


def hub_download(name: str, flag: str) -> Path:
    """The model's files from the Hugging Face hub, in its usual cache (downloaded on first use only)."""
    try:
        import huggingface_hub
    except ImportError:
        raise SourceError(f"{flag} {name} looks like a hub name, and downloading it needs the huggingface_hub "
                          f"package: {HUB_HINT}; or pass a local model folder") from None
    try:
        folder = huggingface_hub.snapshot_download(name, allow_patterns=HUB_FILES)
    except Exception as exc:  # offline, unknown repository, gated, disk full: the hub raises many kinds
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise SourceError(
            f"{flag} {name}: could not get it from the Hugging Face hub ({type(exc).__name__}: {reason}); "
            f"connect once to download it, or download the folder yourself "
            f"(huggingface-cli download {name} --local-dir models/{name.split('/')[-1]}) and pass that folder"
        ) from None
    return Path(folder)


def from_checkpoint(name: str, path: Path, flag: str) -> Source:
    state = load_checkpoint(path, flag=flag)
    tok = embedded_tokenizer(state, f"{flag} {name}")
    return Source(name, "checkpoint", path, model_config(state["config"]), state["model"], tok, path)


# --------------------------------------------------------------------------- a Hugging Face GPT-2 folder


def from_hf_folder(name: str, folder: Path, kind: str, flag: str) -> Source:
    where = f"{flag} {name}"
    config = gpt2_config(read_json(folder / "config.json", where), where, flag)
    if not (folder / "tokenizer.json").is_file():
        raise SourceError(f"{where} has no tokenizer.json: save the tokenizer with the model "
                          f"(tokenizer.save_pretrained(folder)) or pass a folder that has one")
    tok = tokenizer.load(folder / "tokenizer.json", flag=where)
    if tok.get_vocab_size() > config.vocab_size:
        raise SourceError(f"{where}: its tokenizer has {tok.get_vocab_size()} tokens but the model only "
                          f"{config.vocab_size}: the folder mixes two models")
    weights = our_weights(read_weights(folder, where), config, where)
    return Source(name, kind, folder, config, weights, tok, folder / "tokenizer.json")


def read_json(path: Path, where: str) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SourceError(f"{where}: {path.name} is not readable JSON ({exc})") from None
    if not isinstance(value, dict):
        raise SourceError(f"{where}: {path.name} is not a JSON object")
    return value


def gpt2_config(hf: dict, where: str, flag: str = "--init_from") -> GPTConfig:
    """Our GPTConfig for a Hugging Face GPT-2 config.json; SourceError for anything our model cannot reproduce."""
    if hf.get("model_type") != "gpt2":
        raise SourceError(f"{where} is a {hf.get('model_type', 'unknown')!r} model; {flag} takes GPT-2 models "
                          f"(model_type gpt2: gpt2, distilgpt2, gpt2-medium, ...) or our own checkpoints")
    n_embd = hf.get("n_embd")
    problems = {
        "activation_function": hf.get("activation_function", "gelu_new") not in GPT2_GELUS,
        "n_inner": hf.get("n_inner") not in (None, 4 * (n_embd or 0)),
        "layer_norm_epsilon": abs(hf.get("layer_norm_epsilon", 1e-5) - 1e-5) > 1e-12,
        "scale_attn_weights": hf.get("scale_attn_weights", True) is not True,
        "scale_attn_by_inverse_layer_idx": hf.get("scale_attn_by_inverse_layer_idx", False) is not False,
        "tie_word_embeddings": hf.get("tie_word_embeddings", True) is not True,
        "add_cross_attention": hf.get("add_cross_attention", False) is not False,
    }
    bad = [key for key, wrong in problems.items() if wrong]
    if bad:
        raise SourceError(f"{where} uses {', '.join(f'{k}={hf.get(k)!r}' for k in bad)}, which our GPT-2 layout "
                          f"cannot reproduce exactly")
    try:
        config = GPTConfig(vocab_size=hf["vocab_size"], block_size=hf["n_positions"], n_layer=hf["n_layer"],
                           n_head=hf["n_head"], n_embed=n_embd, dropout=float(hf.get("resid_pdrop", 0.1)))
        config.check()
    except (KeyError, TypeError, ValueError) as exc:
        raise SourceError(f"{where}: config.json does not describe a GPT-2 model ({exc})") from None
    return config


def read_weights(folder: Path, where: str) -> dict:
    """The folder's tensors: model.safetensors preferred; pytorch_model.bin read with weights_only=True."""
    if (folder / "model.safetensors").is_file():
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise SourceError(f"{where}: reading model.safetensors needs the safetensors package: "
                              f"pip install -r requirements-extra.txt") from None
        try:
            return load_file(str(folder / "model.safetensors"))
        except Exception as exc:  # safetensors raises its own error types on a damaged file
            raise SourceError(f"{where}: model.safetensors is damaged ({str(exc)[:120]})") from None
    if (folder / "pytorch_model.bin").is_file():
        try:
            weights = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise SourceError(f"{where}: pytorch_model.bin holds Python objects that could run code (or is not a "
                              f"PyTorch file); refusing to load it: use a folder with model.safetensors") from None
        except Exception as exc:  # torch's readers raise many kinds of error on a damaged file
            raise SourceError(f"{where}: pytorch_model.bin is unreadable ({str(exc)[:120]})") from None
        if not isinstance(weights, dict):
            raise SourceError(f"{where}: pytorch_model.bin is not a state dict")
        return weights
    if any(folder.glob("*.index.json")):
        raise SourceError(f"{where} holds a sharded model (several weight files): not supported; GPT-2 models up "
                          f"to gpt2-xl come as one model.safetensors")
    raise SourceError(f"{where} has no model.safetensors or pytorch_model.bin")


def our_weights(hf: dict, config: GPTConfig, where: str) -> dict:
    """GPT-2's tensors under our names: "transformer." prefixed, Conv1D weights transposed, the head tied."""
    out = {}
    for name, tensor in hf.items():
        if not isinstance(tensor, torch.Tensor):
            raise SourceError(f"{where}: {name} is not a tensor")
        name = name.removeprefix("transformer.")
        if name.endswith((".attn.bias", ".attn.masked_bias")) and tensor.dim() > 1:
            continue  # the causal mask older GPT-2 files store as a buffer
        if name == "lm_head.weight":
            continue  # tied to wte (checked below)
        ours = f"transformer.{name}"
        tensor = tensor.float()
        out[ours] = tensor.t().contiguous() if ours.endswith(CONV1D_SUFFIXES) else tensor
    head = hf.get("lm_head.weight")
    if head is not None and "transformer.wte.weight" in out and not torch.equal(head.float(), out["transformer.wte.weight"]):
        raise SourceError(f"{where} has an output layer that is not tied to its embeddings; our model ties them")
    if "transformer.wte.weight" in out:
        out["lm_head.weight"] = out["transformer.wte.weight"]
    with torch.device("meta"):  # names and shapes only
        expected = {k: v.shape for k, v in GPT(config).state_dict().items()}
    missing = sorted(set(expected) - set(out))
    unexpected = sorted(set(out) - set(expected))
    if missing or unexpected:
        first = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise SourceError(f"{where}: the weights do not match config.json ({first})")
    for key, shape in expected.items():
        if out[key].shape != shape:
            raise SourceError(f"{where}: {key} has shape {tuple(out[key].shape)}, config.json needs {tuple(shape)}")
    return out


# --------------------------------------------------------------------------- the run's flags


def merged_flags(args: argparse.Namespace, typed: dict, source: Source) -> tuple[argparse.Namespace, list[str]]:
    """The flags of a run that starts from source (a new namespace) and lines that say what was decided.

    The model's shape and tokenizer come from the source (a typed value that contradicts it is an error);
    --block_size may be smaller (the position table is cropped), never larger; flags the user did not type
    take the fine-tuning defaults.
    """
    where, config = f"--init_from {source.name}", source.config
    own = {"n_layer": config.n_layer, "n_head": config.n_head, "n_embed": config.n_embed,
           "vocab_size": config.vocab_size}
    layout = {name: getattr(config, name) for name in LAYOUT_FIELDS}  # the source's layout, whatever a preset says
    fixed = own | layout
    for flag in SHAPE_FLAGS + LAYOUT_FIELDS:
        if flag in typed and typed[flag] != fixed[flag]:
            raise SourceError(f"--{flag} {typed[flag]} conflicts with {where}, a model with --{flag} {fixed[flag]}: "
                              f"drop --{flag} (the model's shape comes from it)")
    for flag in TOKENIZER_FLAGS:
        if flag in typed and not (flag == "tokenizer_type" and typed[flag] == tokenizer.kind(source.tok)):
            raise SourceError(f"--{flag} cannot be used with {where}: the run encodes the corpus with that "
                              f"model's own tokenizer")
    block = config.block_size
    if "block_size" in typed or args.preset:
        if args.block_size > config.block_size:
            if "block_size" in typed:
                raise SourceError(f"--block_size {args.block_size} is larger than the context of {where} "
                                  f"({config.block_size}): its position table has no more rows; pass at most "
                                  f"{config.block_size}")
        else:
            block = args.block_size
    defaults = {k: v for k, v in FINETUNE_DEFAULTS.items() if k not in typed}
    if "warmup_steps" in defaults:
        defaults["warmup_steps"] = schedule.fitted_warmup(defaults["warmup_steps"], args.max_steps)
    merged = argparse.Namespace(**{**vars(args), **defaults, **own, **layout, "block_size": block, "tokenizer": None,
                                   "tokenizer_type": tokenizer.kind(source.tok), "tokenizer_path": source.tok_path,
                                   "min_frequency": 0})
    notes = [f"init_from: {source.describe()}"]
    if block < config.block_size:
        notes.append(f"init_from: context cropped to {block} tokens (of {config.block_size})")
    if defaults:
        notes.append("init_from: fine-tuning defaults " + " ".join(f"{k}={v}" for k, v in defaults.items())
                     + " (type a flag to change it)")
    if args.preset:
        notes.append(f"init_from: --preset {args.preset} gives the batch, time budget and evaluation settings; "
                     f"the model's shape and tokenizer come from the source, the optimizer settings from the "
                     f"fine-tuning defaults")
    return merged, notes


def distill_flags(args: argparse.Namespace, typed: dict, teacher: Source, decided: tuple | None) -> argparse.Namespace:
    """The flags of a run that distils teacher (a new namespace): the corpus is encoded with the teacher's
    tokenizer, since the student learns distributions over the teacher's tokens. decided: (tokenizer, whose) when
    --resume or --init_from has fixed the run's tokenizer already; it must then be the teacher's."""
    where, context = f"--distill_from {teacher.name}", teacher.config.block_size
    if args.block_size > context:
        raise SourceError(f"--block_size {args.block_size} is longer than the context of {where} ({context} "
                          f"tokens): pass --block_size {context} or less")
    if decided is not None:
        own, whose = decided
        if tokenizer.tokenizer_hash(own) != tokenizer.tokenizer_hash(teacher.tok):
            raise SourceError(f"{where} has another tokenizer than {whose}: a teacher must predict the same tokens "
                              f"as the model it teaches")
        return args
    same = {"tokenizer_type": tokenizer.kind(teacher.tok), "vocab_size": teacher.tok.get_vocab_size()}
    for flag in TOKENIZER_FLAGS + ("vocab_size",):
        if flag in typed and not (flag in same and typed[flag] == same[flag]):
            raise SourceError(f"--{flag} cannot be used with {where}: the run encodes the corpus with the teacher's "
                              f"own tokenizer")
    return argparse.Namespace(**{**vars(args), **same, "tokenizer": None, "tokenizer_path": teacher.tok_path,
                                 "min_frequency": 0})


def initial_weights(source: Source, block_size: int) -> dict:
    """The source's weights for a model with this context: the position table keeps its first rows."""
    weights = dict(source.weights)
    if "transformer.wpe.weight" in weights:  # rotary models have no table
        weights["transformer.wpe.weight"] = weights["transformer.wpe.weight"][:block_size].clone()
    return weights


def config_for(source: Source, args) -> GPTConfig:
    """The model of a run that starts from source: its shape, this run's context and dropout."""
    return GPTConfig(**{**asdict(source.config), "block_size": args.block_size, "dropout": args.dropout,
                        "attn_dropout": args.attn_dropout})
