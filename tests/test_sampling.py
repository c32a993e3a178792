"""sample_bpe.py for playing with a model: interactive sessions, stop strings, repetition penalty, min-p, batches."""

import io
import math
import sys

import pytest
import torch

import model as model_module
import sample_bpe
import trainer
from checkpoint import load_model
from model import penalise, sample_next, token_probs
from sampling import Settings, StopFilter, StreamDecoder


def sample(capsys, ckpt, *argv) -> str:
    assert sample_bpe.main(["--ckpt", str(ckpt), "--device", "cpu", *argv]) == 0
    return capsys.readouterr().out


# --------------------------------------------------------------------------- the distribution, by hand


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_of_seen_tokens():
    logits = torch.tensor([[2.0, -1.0, 0.5, 0.0, 3.0]])
    seen = torch.tensor([[True, True, False, True, False]])
    assert penalise(logits, 2.0, seen).tolist() == [[1.0, -2.0, 0.5, 0.0, 3.0]]
    probs = token_probs(logits, repetition_penalty=2.0, seen=seen)
    expected = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0]).softmax(-1)
    torch.testing.assert_close(probs[0], expected)
    # Greedy decoding is penalised too: token 0 (2.0) loses to... nothing unseen above 1.0 but token 4.
    assert sample_next(torch.tensor([[2.0, 1.5, 0.0]]), temperature=0, repetition_penalty=2.0,
                       seen=torch.tensor([[True, False, False]])).item() == 1


def test_min_p_keeps_tokens_at_least_that_likely_relative_to_the_top_one():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.12, 0.06, 0.02]]))
    probs = token_probs(logits, temperature=1.0, min_p=0.2)  # keep p >= 0.2 x 0.5 = 0.1
    kept = torch.tensor([0.5, 0.3, 0.12, 0.0, 0.0])
    torch.testing.assert_close(probs[0], kept / kept.sum())
    assert token_probs(logits, min_p=1.0)[0].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]  # only the top one
    torch.testing.assert_close(token_probs(logits, min_p=0.0), logits.softmax(-1))  # off


def test_the_steps_compose_in_the_order_transformers_uses():
    transformers = pytest.importorskip("transformers", reason="the reference needs the transformers extra")
    from transformers.generation import logits_process as lp

    torch.manual_seed(0)
    logits = torch.randn(3, 50) * 3
    seen_ids = torch.randint(0, 50, (3, 8))
    seen = torch.zeros(3, 50, dtype=torch.bool).scatter_(1, seen_ids, True)
    settings = dict(temperature=0.7, top_k=20, top_p=0.9, min_p=0.05, repetition_penalty=1.3)
    ours = token_probs(logits, seen=seen, **settings)
    processors = transformers.LogitsProcessorList([
        lp.RepetitionPenaltyLogitsProcessor(1.3), lp.TemperatureLogitsWarper(0.7), lp.TopKLogitsWarper(20),
        lp.TopPLogitsWarper(0.9), lp.MinPLogitsWarper(0.05)])
    theirs = processors(seen_ids, logits.clone()).softmax(-1)
    # Float32 softmax and cumulative sums of the same values: ulps apart, and the same tokens kept.
    assert torch.equal(ours > 0, theirs > 0)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_a_tiny_temperature_is_greedy_not_nan():
    logits = torch.tensor([[1.0, 3.0, 2.0]])
    assert token_probs(logits, temperature=1e-45)[0].tolist() == [0.0, 1.0, 0.0]


# --------------------------------------------------------------------------- stop strings


@pytest.mark.parametrize("pieces", [["Hello, ", "wor", "ld\n\n", "more"], ["Hello, world\n", "\nmore"],
                                    ["H", "e", "l", "l", "o", ",", " ", "w", "o", "r", "l", "d", "\n", "\n", "m"]])
def test_a_stop_string_split_over_pieces_is_caught_and_never_printed(pieces):
    stop = StopFilter(["\n\n", "STOP"])
    out = "".join(stop.push(p) for p in pieces) + stop.flush()
    assert out == "Hello, world" and stop.stopped


def test_text_that_only_looks_like_a_stop_string_is_let_through():
    stop = StopFilter(["\ndef "])
    out = "".join(stop.push(p) for p in ["x = 1\n", "de", "f", "ault = 2\n"]) + stop.flush()
    assert out == "x = 1\ndefault = 2\n" and not stop.stopped


def test_stop_ends_a_sample_even_across_token_boundaries(tiny_run, capsys):
    ckpt = tiny_run / trainer.BEST_NAME
    full = sample(capsys, ckpt, "--prompt", "ROMEO:", "--temperature", "0", "--max_new_tokens", "40")
    model, tok, _, _ = load_model(ckpt)
    generated = full[len("ROMEO:"):-1]
    # A stop string that starts inside one token and ends inside the next one.
    ids = tok.encode(generated, add_special_tokens=False).ids
    pieces = [tok.decode([i]) for i in ids]
    ends = [sum(len(p) for p in pieces[:i]) for i in range(1, len(pieces))]  # where a token ends in the text
    # The last character of one token and the first of the next, where that pair first occurs.
    start = next(end - 1 for end in ends if generated.find(generated[end - 1 : end + 1]) == end - 1)
    stop = generated[start : start + 2]
    out = sample(capsys, ckpt, "--prompt", "ROMEO:", "--temperature", "0", "--max_new_tokens", "40", "--stop", stop)
    assert out == "ROMEO:" + generated[: generated.index(stop)] + "\n"


def test_stop_at_eos_still_works(tiny_run, capsys, monkeypatch):
    model_forward = sample_bpe.load_model

    def eos_after_three(*args, **kwargs):  # a model that ends its text after three tokens
        model, tok, specials, state = model_forward(*args, **kwargs)
        calls = {"n": 0}
        real = model.decode  # what generate calls for every step with the cache

        def decode(idx, cache):
            logits = real(idx, cache)
            calls["n"] += 1
            if calls["n"] == 4:
                logits[:, -1, specials.eos] = 1e4
            return logits

        model.decode = decode
        return model, tok, specials, state

    monkeypatch.setattr(sample_bpe, "load_model", eos_after_three)
    out = sample(capsys, tiny_run / trainer.BEST_NAME, "--prompt", "A", "--temperature", "0", "--stop_at_eos",
                 "--max_new_tokens", "30")
    model, tok, _, _ = model_forward(tiny_run / trainer.BEST_NAME, "cpu")
    ids = [int(t) for t in model.generate(torch.tensor([tok.encode("A").ids]), 3, temperature=0)]
    assert out == "A" + tok.decode(ids) + "\n"


# --------------------------------------------------------------------------- batches and prompt files


def test_a_batch_of_samples_equals_the_samples_drawn_one_by_one(tiny_run, capsys):
    ckpt = tiny_run / trainer.BEST_NAME
    args = ["--prompt", "JULIET:", "--max_new_tokens", "30", "--min_p", "0.02", "--repetition_penalty", "1.2"]
    batch = sample(capsys, ckpt, *args, "--num_samples", "3", "--seed", "7").split("\n" + "-" * 40 + "\n")
    alone = [sample(capsys, ckpt, *args, "--seed", str(7 + i)) for i in range(3)]
    assert len(batch) == 3 and len(set(batch)) == 3  # three different samples
    assert [b.rstrip("\n") for b in batch] == [a.rstrip("\n") for a in alone]


def test_matrices_split_across_threads_sample_the_same_text(tiny_run, capsys, monkeypatch):
    ckpt = tiny_run / trainer.BEST_NAME
    args = ["--prompt", "JULIET:", "--max_new_tokens", "30", "--seed", "3"]
    monkeypatch.setattr(model_module, "SPLIT_MIN_SIZE", 10**12)  # no matrix is split
    whole = sample(capsys, ckpt, *args)
    monkeypatch.setattr(model_module, "SPLIT_MIN_SIZE", 0)  # every matrix is, into one block per thread
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert sample(capsys, ckpt, *args) == whole
    finally:
        torch.set_num_threads(before)


def test_a_prompt_file_is_the_prompt(tiny_run, tmp_path, capsys):
    code = "def f(x):\n\treturn x\n"  # fits the tiny model's 32-token context
    (tmp_path / "start.py").write_text(code, encoding="utf-8")
    out = sample(capsys, tiny_run / trainer.BEST_NAME, "--prompt_file", str(tmp_path / "start.py"),
                 "--max_new_tokens", "5", "--temperature", "0")
    assert out.startswith(code) and len(out) > len(code)


# --------------------------------------------------------------------------- interactive


def run_session(capsys, monkeypatch, ckpt, script: str, *argv) -> tuple[str, list[str]]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(script))
    assert sample_bpe.main(["--ckpt", str(ckpt), "--device", "cpu", "--interactive", *argv]) == 0
    out, err = capsys.readouterr()
    return out, [line for line in err.splitlines() if line.strip() and not line.startswith("\r")]


def test_an_interactive_session_reads_prompts_and_commands_from_stdin(tiny_run, capsys, monkeypatch):
    ckpt = tiny_run / trainer.BEST_NAME
    one_shot = sample(capsys, ckpt, "--prompt", "ROMEO:", "--temperature", "0", "--max_new_tokens", "12")
    short = sample(capsys, ckpt, "--prompt", "JULIET:", "--temperature", "0", "--max_new_tokens", "5")
    block = "def f(x):\n\treturn x"
    code = sample(capsys, ckpt, "--prompt", block, "--temperature", "0", "--max_new_tokens", "5")
    script = "\n".join([
        "/set temperature 0", "/set max_new_tokens 12", "ROMEO:",
        "/set max_new_tokens 5", "JULIET:",
        "/set temperature -1",        # a bad value: one line, the setting is kept
        "/set top_q 3",               # no such setting
        "/frobnicate",                # no such command
        "",                           # an empty prompt
        "to be or not " * 40,         # longer than the model's context (32 tokens)
        '"""', *block.split("\n"), '"""',
        "/show", "/quit", "NOT READ",
    ]) + "\n"
    out, notes = run_session(capsys, monkeypatch, ckpt, script, "--temperature", "0.8")
    assert out == one_shot + short + code
    assert notes[0].startswith("interactive:") and "/help" in notes[0]
    assert "temperature=0.0" in notes and "max_new_tokens=5" in notes
    assert any(n.startswith("temperature must be 0 (greedy) or more, got -1.0; kept temperature=0.0") for n in notes)
    assert any(n.startswith("unknown setting 'top_q'") for n in notes)
    assert any(n.startswith("unknown command '/frobnicate'") for n in notes)
    assert any(n.startswith("empty prompt") for n in notes)
    assert any("longer than the model's context of 32" in n for n in notes)
    assert any(n.startswith("temperature=0.0 top_k=80") for n in notes)  # /show


def test_chat_mode_keeps_the_conversation_as_context(tiny_run, capsys, monkeypatch):
    ckpt = tiny_run / trainer.BEST_NAME
    out, notes = run_session(capsys, monkeypatch, ckpt, "A:\nB:\n/reset\nB:\n", "--chat", "--temperature", "0",
                             "--max_new_tokens", "4")
    first, second, after_reset = out.split("\n")[:3] if out.count("\n") >= 3 else (None, None, None)
    model, tok, _, _ = load_model(ckpt)

    def greedy(text):
        ids = [int(t) for t in model.generate(torch.tensor([tok.encode(text).ids]), 4, temperature=0)]
        return tok.decode(ids)

    reply_a = greedy("A:")
    assert out.startswith("A:" + reply_a + "\n")
    joint = "" if reply_a.endswith("\n") else "\n"
    assert "B:" + greedy("A:" + reply_a + joint + "B:") in out  # the second turn saw the first
    assert out.endswith("B:" + greedy("B:") + "\n")  # after /reset, a fresh context
    assert "conversation forgotten" in notes


def test_help_lists_the_commands(tiny_run, capsys, monkeypatch):
    _, notes = run_session(capsys, monkeypatch, tiny_run / trainer.BEST_NAME, "/help\n")
    text = "\n".join(notes)
    for command in ("/set", "/show", "/stop", "/chat", "/reset", "/quit", '"""'):
        assert command in text
    assert "temperature" in text and "min_p" in text and "repetition_penalty" in text


def test_settings_parse_and_refuse_like_the_flags():
    s = Settings()
    assert s.with_value("top_k", "5").top_k == 5 and s.with_value("min_p", "0.1").min_p == 0.1
    for name, value in (("top_k", "x"), ("temperature", "nan"), ("colour", "red")):
        with pytest.raises(ValueError):
            s.with_value(name, value)
    assert s.with_value("repetition_penalty", "0").problem()[0] == "repetition_penalty"
    assert math.isclose(s.with_value("top_p", "0.5").top_p, 0.5)


def test_stream_decoder_never_splits_a_multibyte_character(tiny_tokenizer):
    text = "fin 🙂 café 東京"
    ids = tiny_tokenizer.encode(text, add_special_tokens=False).ids
    decoder = StreamDecoder(tiny_tokenizer)
    pieces = [decoder.push(i) for i in ids] + [decoder.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
