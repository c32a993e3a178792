"""How good is a model on a token stream: quick loss estimates for training, full-stream scores for the rest.

``estimate_loss`` averages a fixed set of random batches (cheap, what training prints every evaluation);
``evaluate_stream`` predicts every token of a stream exactly once (what the benchmarks and score_bpe.py
report). Both return mean nats per token; ``data.bits_per_byte`` turns that into bits per byte.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import data


@torch.no_grad()
def estimate_loss(model, token_data: data.TokenData, batch_size: int, eval_iters: int, device,
                  autocast: Callable = contextlib.nullcontext, seed: int = 0) -> dict[str, float]:
    """Mean loss on eval_iters random batches of each split (the same batches at every evaluation)."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for split in ("train", "val"):
        losses = []
        for _ in range(eval_iters):
            x, y = token_data.get_batch(split, batch_size, gen)
            with autocast():
                _, loss = model(x.to(device), y.to(device))
            losses.append(loss.item())
        out[split] = float(np.mean(losses))
    model.train()
    return out


def stream_windows(num_tokens: int, block: int, stride: int | None = None) -> list[tuple[int, int, int]]:
    """Windows (start, length, scored) covering a stream of num_tokens so every token after the first is
    predicted exactly once.

    A window feeds tokens [start, start + length] and scores its last ``scored`` predictions. Without a
    stride the windows do not overlap (each starts without context, as in nanoGPT's and llm.c's
    validation). With a stride s < block, windows start every s tokens and score only their last s
    predictions (the first window scores all), so every scored token but the first window's sees at
    least block - s tokens of context (the Hugging Face perplexity guide's sliding window).
    """
    stride = block if stride is None else stride
    windows, scored_to = [], 0  # predictions of tokens 1 .. scored_to are done
    start = 0
    while scored_to < num_tokens - 1:
        length = min(block, num_tokens - 1 - start)
        end = start + length  # this window predicts tokens start + 1 .. end
        windows.append((start, length, end - scored_to))
        scored_to = end
        start += stride
    return windows


@torch.no_grad()
def evaluate_stream(model, tokens: np.ndarray, batch_size: int, device,
                    autocast: Callable = contextlib.nullcontext, stride: int | None = None) -> float:
    """Mean loss (nats) of predicting every token of the stream after the first, each exactly once."""
    total, count = stream_nats(model, tokens, batch_size, device, autocast, stride)
    return total / max(count, 1)


@torch.no_grad()
def stream_nats(model, tokens: np.ndarray, batch_size: int, device, autocast: Callable = contextlib.nullcontext,
                stride: int | None = None, progress: Callable[[int, int], None] | None = None) -> tuple[float, int]:
    """(summed nats, tokens predicted) over a stream; see stream_windows for which windows are used.

    Shows its own bar, or, with progress, calls progress(windows just done, windows in all) after each batch.
    """
    was_training = model.training
    model.eval()
    block = model.config.block_size
    windows = stream_windows(len(tokens), block, stride)
    # Windows of the same length batch together; only the last one (or two) can be shorter.
    batches, current = [], []
    for w in windows:
        if current and (len(current) == batch_size or w[1] != current[0][1]):
            batches.append(current)
            current = []
        current.append(w)
    if current:
        batches.append(current)
    total, count = 0.0, 0
    bar = tqdm(batches, desc="evaluating", unit=" batches", leave=False, disable=progress is not None or len(batches) < 2)
    for group in bar:
        length = group[0][1]
        blocks = torch.from_numpy(np.stack([tokens[s : s + length + 1] for s, _, _ in group]).astype(np.int64))
        x, y = blocks[:, :-1].to(device), blocks[:, 1:].to(device)  # (B, T) each
        with autocast():
            logits, _ = model(x)
        nats = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none").view(y.shape)  # (B, T)
        scored = torch.tensor([w[2] for w in group], device=nats.device)  # (B,) predictions each window keeps
        keep = torch.arange(length, device=nats.device)[None, :] >= length - scored[:, None]  # (B, T): its last ones
        total += nats[keep].sum().item()
        count += int(scored.sum())
        if progress is not None:
            progress(len(group), len(windows))
    model.train(was_training)
    return total, count
