"""Self-contained checkpoints: weights, config, optimizer state and the tokenizer itself, validated on load.

Everything inside is a tensor or a plain Python value, so ``torch.load(path, weights_only=True)``
reads it and a checkpoint from a stranger cannot run code. Files are written atomically. Every reader
(sampling, resuming, exporting, scoring, ``--init_from``) goes through ``load_checkpoint``, which checks
the structure once: the format tag, a config that builds a model, weights of that model's shapes and an
embedded tokenizer that loads; ``check_resumable`` adds the training state a resume needs.
"""

from __future__ import annotations

import math
import pickle
import random
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

import data
import tokenizer
from files import advice, atomic_write, reason
from model import GPT, GPTConfig

FORMAT = "mini-gpt-bpe"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("model", "config")
TOKENIZER_KEYS = ("tokenizer_json", "tokenizer_model")  # byte-level BPE or SentencePiece: one of them


class CheckpointError(Exception):
    """A checkpoint that is missing, unsafe, broken or not ours: shown as one line."""


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Writes state atomically; a full disk or a lost folder leaves the previous file and raises CheckpointError."""
    path = Path(path)
    state = {"format": FORMAT, "format_version": FORMAT_VERSION, **state}
    existed = path.is_file()
    try:
        atomic_write(path, lambda f: torch.save(state, f))
    except OSError as exc:
        kept = "the previous checkpoint there is intact" if existed else "no checkpoint was written"
        raise CheckpointError(f"could not write {path} ({reason(exc)}); {kept}: {advice(exc)}") from None


def load_checkpoint(path: str | Path, map_location="cpu", flag: str = "--ckpt") -> dict:
    """Loads and validates one of our checkpoints; anything else raises CheckpointError naming flag."""
    path = Path(path)
    where = f"{flag} {path}"
    if not path.exists():
        raise CheckpointError(f"{where} does not exist: train one with train_bpe.py or pass the path of a .pt file")
    if path.is_dir():
        raise CheckpointError(f"{where} is a folder: pass the .pt file inside it")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "GLOBAL" not in str(exc):  # not a pickle of objects at all: random bytes, text, ...
            raise CheckpointError(f"{where} is not a PyTorch file: pass a .pt written by train_bpe.py") from None
        raise CheckpointError(
            f"{where} holds Python objects that could run code; refusing to load it "
            f"(only load checkpoints written by train_bpe.py)"
        ) from None
    except OSError as exc:
        raise CheckpointError(f"{where} cannot be read ({reason(exc)})") from None
    except Exception as exc:  # torch's zip and legacy readers raise many kinds of error on garbage
        # torch's own reader errors say what is wrong ("failed finding central directory"); others do not.
        detail = f": {str(exc).split('. ')[0][:120]}" if isinstance(exc, RuntimeError) else ""
        raise CheckpointError(f"{where} is unreadable (truncated, or not a PyTorch file{detail})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        what = "a bare state_dict" if isinstance(state, dict) and _looks_like_state_dict(state) else "from another program"
        raise CheckpointError(f"{where} is not a train_bpe.py checkpoint ({what}); pass one written by train_bpe.py")
    version = state.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{where} has format version {version}, newer than this code's {FORMAT_VERSION}: update the code"
        )
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if not any(k in state for k in TOKENIZER_KEYS):
        missing.append(" or ".join(TOKENIZER_KEYS))
    if missing:
        raise CheckpointError(f"{where} is incomplete (missing {', '.join(missing)}): it cannot be used")
    problem = structure_problem(state)
    if problem:
        raise CheckpointError(f"{where} is damaged ({problem}): use another checkpoint")
    return state


def _looks_like_state_dict(state: dict) -> bool:
    return bool(state) and all(isinstance(v, torch.Tensor) for v in state.values())


def model_config(config: dict) -> GPTConfig:
    """The GPTConfig a checkpoint's config dict describes; ValueError when it describes no valid model."""
    if not isinstance(config, dict):
        raise ValueError(f"config is a {type(config).__name__}, not a dict")
    known = {f.name for f in fields(GPTConfig)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"config has unknown field(s) {', '.join(map(str, unknown))}; a newer version wrote it?")
    cfg = GPTConfig(**config)
    cfg.check()
    return cfg


def structure_problem(state: dict) -> str | None:
    """What is wrong with a checkpoint's config and weights, in a few words, or None."""
    try:
        cfg = model_config(state["config"])
    except (ValueError, TypeError) as exc:
        return str(exc)
    weights = state["model"]
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        return "model is not a dict of tensors"
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        expected = {k: v.shape for k, v in GPT(cfg).state_dict().items()}
    if set(weights) != set(expected):
        extra, lacking = sorted(set(weights) - set(expected)), sorted(set(expected) - set(weights))
        return f"weights do not match the config: {'unexpected ' + extra[0] if extra else 'missing ' + lacking[0]}"
    for name, shape in expected.items():
        if weights[name].shape != shape:
            return f"{name} has shape {tuple(weights[name].shape)}, the config needs {tuple(shape)}"
        if not weights[name].is_floating_point():
            return f"{name} is not a floating-point tensor"
    return None


def check_resumable(state: dict, path: Path) -> None:
    """Raises CheckpointError when the training state a resume reads has the wrong kind of value."""
    expected = {"args": dict, "optimizer": dict, "scaler": dict, "rng": dict, "step": int,
                "best_val_loss": (int, float), "corpus_fingerprint": str}
    for key, kind in expected.items():
        value = state.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise CheckpointError(f"--resume {path} is damaged ({key} is {type(value).__name__}); "
                                  f"it can still be sampled from, or resume another checkpoint")
    if state["step"] < 0 or not isinstance(state.get("train_time", 0.0), (int, float)):
        raise CheckpointError(f"--resume {path} is damaged (step {state['step']}): resume another checkpoint")
    if not (math.isfinite(state["best_val_loss"]) or state["best_val_loss"] == math.inf):
        raise CheckpointError(f"--resume {path} is damaged (best_val_loss {state['best_val_loss']})")


def embedded_tokenizer(state: dict, where: str):
    """The tokenizer a checkpoint carries; CheckpointError naming where when it is damaged or needs a package."""
    try:
        tok = tokenizer.from_checkpoint(state)
    except data.DataError as exc:  # a SentencePiece checkpoint without the package
        raise CheckpointError(f"{where}: {exc}") from None
    except ValueError as exc:
        raise CheckpointError(f"{where} is damaged ({exc}): use another checkpoint") from None
    vocab = state["config"]["vocab_size"]
    if tok.get_vocab_size() > vocab:
        raise CheckpointError(f"{where} is damaged (its tokenizer has {tok.get_vocab_size()} tokens, the model "
                              f"{vocab}): use another checkpoint")
    return tok


def load_model(path: str | Path, device="cpu", flag: str = "--ckpt"):
    """(model in eval mode, tokenizer, special ids, the checkpoint's dict) from one of our checkpoints."""
    state = load_checkpoint(path, flag=flag)
    where = f"{flag} {path}"
    tok = embedded_tokenizer(state, where)
    try:
        specials = tokenizer.checkpoint_special_ids(state, tok)
    except data.DataError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    model = GPT(model_config(state["config"]))
    model.load_state_dict(state["model"])  # names and shapes were checked by load_checkpoint
    return model.to(device).eval(), tok, specials, state


# --------------------------------------------------------------------------- resumable state


def rng_state(batch_generator: torch.Generator) -> dict:
    """Every random stream a training step reads, as tensors and plain values (weights_only-safe)."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {**np_state, "state": {"key": np_state["state"]["key"].tolist(), "pos": np_state["state"]["pos"]}},
        "torch": torch.get_rng_state(),
        "batches": batch_generator.get_state(),  # where the data sampler is in its random sequence
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict, batch_generator: torch.Generator) -> None:
    """Puts back what rng_state captured, so the next step draws what it would have drawn."""
    random.setstate(state["python"])
    np_state = state["numpy"]
    np.random.set_state({**np_state, "state": {
        "key": np.array(np_state["state"]["key"], dtype=np.uint32), "pos": np_state["state"]["pos"]}})
    torch.set_rng_state(state["torch"])
    batch_generator.set_state(state["batches"])
    cuda = state.get("cuda")
    # A run moved between CUDA and CPU (or to another GPU count) cannot replay the GPU streams; dropout
    # then differs from the uninterrupted run, nothing else does.
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
