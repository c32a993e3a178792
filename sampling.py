"""From tokens to text while generating: sampling settings, streaming decode, stop strings, batched samples.

``model.generate`` yields token ids; this module turns them into text pieces for every front end
(one-shot, batched, interactive) in the same way:

    for row, text in generate_text(model, tok, specials, prompt_ids, settings, num_samples=3):
        ...                                  # text pieces of sample `row`, in order

A stop string ends a sample even when it spans several tokens, and is never printed: text that could be
the start of a stop string is held back until the next token decides.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Iterator

import torch

# (name, type) of the settings a user may change, in the order /show and --help list them.
SETTABLE = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "max_new_tokens", "seed")


@dataclass(frozen=True)
class Settings:
    """How samples are drawn; the sampling steps apply in the order of model.sample_next."""

    max_new_tokens: int = 300  # tokens per sample at most
    temperature: float = 0.9  # 0 = always the likeliest token (greedy)
    top_k: int = 80  # sample among the k likeliest tokens (0 = all)
    top_p: float = 1.0  # nucleus: the smallest set of tokens with this much probability (1 = off)
    min_p: float = 0.0  # drop tokens less likely than min_p x the likeliest one (0 = off)
    repetition_penalty: float = 1.0  # > 1 makes tokens already in the text less likely (1 = off)
    seed: int = 1337  # sample i of a batch draws from a generator seeded with seed + i
    stop: tuple[str, ...] = field(default_factory=tuple)  # a sample ends where one of these appears
    stop_at_eos: bool = False  # a sample ends at the end-of-text token

    def problem(self) -> tuple[str, str] | None:
        """(setting, what is wrong with its value) for the first bad value, or None."""
        checks = {
            "max_new_tokens": (self.max_new_tokens >= 1, "must be at least 1"),
            "temperature": (self.temperature >= 0, "must be 0 (greedy) or more"),
            "top_k": (self.top_k >= 0, "must be 0 (off) or more"),
            "top_p": (0 < self.top_p <= 1, "must be in (0, 1]"),
            "min_p": (0 <= self.min_p <= 1, "must be in [0, 1]"),
            "repetition_penalty": (self.repetition_penalty > 0, "must be more than 0 (1 = off)"),
            "seed": (0 <= self.seed < 2**63, "must be between 0 and 2**63 - 1"),
        }
        for name, (ok, rule) in checks.items():
            if not ok:
                return name, f"{rule}, got {getattr(self, name)}"
        if any(s == "" for s in self.stop):
            return "stop", "must not be empty: an empty stop string would end every sample at once"
        return None

    def with_value(self, name: str, text: str) -> Settings:
        """A copy with one setting parsed from text; ValueError with a readable reason otherwise."""
        if name not in SETTABLE:
            raise ValueError(f"unknown setting {name!r}: one of {', '.join(SETTABLE)}")
        kind = {f.name: f.type for f in fields(self)}[name]
        try:
            value = int(text) if kind == "int" else float(text)
        except ValueError:
            raise ValueError(f"{name} takes {'a whole number' if kind == 'int' else 'a number'}, got {text!r}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{name} must be a finite number, got {text}")
        return replace(self, **{name: value})


class StreamDecoder:
    """Turns token ids into text piece by piece, holding back an unfinished multi-byte character.

    Only the ids since the last finished piece are decoded, with the one before them as context (a
    tokenizer may decode an id differently at the start of a text): the cost per token stays constant
    however long the text grows.
    """

    MAX_PENDING = 16  # ids that never complete a character (invalid UTF-8) are let out after this many

    def __init__(self, tok):
        self.tok, self.ids, self.context = tok, [], 0  # ids[:context] were already emitted

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tok.decode(self.ids)
        if text.endswith("\ufffd") and len(self.ids) - self.context < self.MAX_PENDING:
            return ""  # a character whose bytes have not all arrived yet
        return self._emit(text)

    def flush(self) -> str:
        return self._emit(self.tok.decode(self.ids))

    def _emit(self, text: str) -> str:
        new = text[len(self.tok.decode(self.ids[: self.context])) :]
        self.ids, self.context = self.ids[-1:], min(len(self.ids), 1)
        return new


class StopFilter:
    """Passes text through until a stop string appears; the stop string and what follows are dropped.

    Text that could be the beginning of a stop string is held back until more text decides, so a stop
    string split over several tokens (or pieces) is still caught and never half printed.
    """

    def __init__(self, stops: tuple[str, ...] | list[str]):
        self.stops, self.pending, self.stopped = [s for s in stops if s], "", False

    def push(self, text: str) -> str:
        if self.stopped:
            return ""
        self.pending += text
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.pending, self.stopped = self.pending[: min(hits)], "", True
            return out
        hold = max((n for s in self.stops for n in range(min(len(s) - 1, len(self.pending)), 0, -1)
                    if self.pending.endswith(s[:n])), default=0)
        out, self.pending = self.pending[: len(self.pending) - hold], self.pending[len(self.pending) - hold :]
        return out

    def flush(self) -> str:
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out


def generators(settings: Settings, num_samples: int, device) -> list[torch.Generator]:
    """One random stream per sample (seed, seed + 1, ...): sample i is the same drawn alone or in a batch."""
    return [torch.Generator(device=device).manual_seed((settings.seed + i) % 2**63) for i in range(num_samples)]


def generate_text(model, tok, specials, prompt_ids: list[int], settings: Settings, num_samples: int = 1,
                  gens: list[torch.Generator] | None = None) -> Iterator[tuple[int, str]]:
    """Yields (sample, text piece) as the samples of one batch are generated, until each one stops."""
    device = model.lm_head.weight.device
    gens = gens or generators(settings, num_samples, device)
    idx = torch.tensor([prompt_ids] * num_samples, dtype=torch.long, device=device)
    decoders = [StreamDecoder(tok) for _ in range(num_samples)]
    filters = [StopFilter(settings.stop) for _ in range(num_samples)]
    done = [False] * num_samples
    steps = model.generate(idx, settings.max_new_tokens, settings.temperature, settings.top_k, settings.top_p,
                           gens, min_p=settings.min_p, repetition_penalty=settings.repetition_penalty)
    for tokens in steps:
        for row, token in enumerate(tokens.tolist()):
            if done[row]:
                continue
            if settings.stop_at_eos and token == specials.eos:
                done[row] = True
                text = filters[row].push(decoders[row].flush()) + filters[row].flush()
            else:
                text = filters[row].push(decoders[row].push(token))
                done[row] = filters[row].stopped
            if text:
                yield row, text
        if all(done):
            break
    for row in range(num_samples):
        if not done[row]:
            text = filters[row].push(decoders[row].flush()) + filters[row].flush()
            if text:
                yield row, text
