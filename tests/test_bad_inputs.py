"""Every input a user can get wrong: one line on stderr naming it, exit code 2, no file touched.

The cases run in-process through main(argv); the README's "When an input is wrong" table lists them.
"""

import hashlib
import json
import random
import shutil
from pathlib import Path

import pytest
import torch

import export_gguf
import export_hf
import sample_bpe
import score_bpe
import tokenizer
import train_bpe
import trainer
from checkpoint import FORMAT_VERSION, CheckpointError, load_checkpoint, load_model
from model import GPT, GPTConfig

from helpers import ROOT, TINY_MODEL_ARGS

CORPUS = (ROOT / "data" / "input.txt").read_text(encoding="utf-8")


class CreatesFile:
    """Unpickling this runs open(path, "w"): what a malicious checkpoint would do, harmlessly."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def ws(tiny_run, tmp_path_factory) -> Path:
    """A folder of good and bad inputs; every case runs in it and must leave it exactly as it was."""
    ws = tmp_path_factory.mktemp("inputs")
    (ws / "corpus.txt").write_text(CORPUS[20000:32000], encoding="utf-8")  # not the text good.pt trained on
    (ws / "empty.txt").write_bytes(b"")
    (ws / "blob.txt").write_bytes(b"PK\x03\x04\x00\x00binary" * 50)
    (ws / "latin1.txt").write_bytes("café crème, naïve".encode("latin-1"))
    (ws / "short.txt").write_text("To be, or not to be.\n", encoding="utf-8")
    (ws / "nodocs").mkdir()
    (ws / "nodocs" / "photo.png").write_bytes(b"\x89PNG\r\n")
    (ws / "nodocs" / "weights.bin").write_bytes(b"\x00" * 64)

    good = torch.load(tiny_run / trainer.LAST_NAME, weights_only=True)
    shutil.copy(tiny_run / trainer.LAST_NAME, ws / "good.pt")
    torch.save(good["model"], ws / "state_dict.pt")
    torch.save({"epoch": 3, "net": good["model"], "hyper": {"lr": 0.1}}, ws / "foreign.pt")
    raw = (ws / "good.pt").read_bytes()
    (ws / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    (ws / "random.pt").write_bytes(random.Random(0).randbytes(4096))
    torch.save({**good, "format_version": FORMAT_VERSION + 1}, ws / "future.pt")
    torch.save({k: v for k, v in good.items() if k != "tokenizer_json"}, ws / "incomplete.pt")
    torch.save({**good, "config": {**good["config"], "n_layer": 3}}, ws / "damaged.pt")
    torch.save({k: v for k, v in good.items() if k != "rng"}, ws / "old.pt")
    torch.save({**good, "model": CreatesFile(ws / "pwned")}, ws / "evil.pt")
    # Crafted or damaged in one field each: every reader validates the structure in one place.
    torch.save({**good, "tokenizer_json": "{not json"}, ws / "badtok.pt")
    torch.save({**good, "tokenizer_type": "wordpiece"}, ws / "oddtok.pt")
    torch.save({**good, "args": None}, ws / "noargs.pt")
    torch.save({**good, "step": "x"}, ws / "badstep.pt")
    torch.save({**good, "config": list(good["config"].values())}, ws / "listconfig.pt")
    wide = {**good["model"], "transformer.wte.weight": torch.zeros(300, 48)}
    torch.save({**good, "model": {**wide, "lm_head.weight": wide["transformer.wte.weight"]}}, ws / "badshape.pt")
    torch.save({**good, "args": {**good["args"], "max_time": 2.0}, "train_time": 5.0}, ws / "timed.pt")
    torch.save({**good, "args": {**good["args"], "distill_from": str(ws / "gone.pt")}}, ws / "orphan.pt")
    (ws / "out_self").mkdir()
    shutil.copy(ws / "good.pt", ws / "out_self" / trainer.BEST_NAME)  # a teacher where the run would save
    no_bias = {**good["config"], "bias": False}  # a sound model that llama.cpp's gpt2 cannot run
    torch.save({**good, "config": no_bias, "model": GPT(GPTConfig(**no_bias)).state_dict()}, ws / "nobias.pt")
    # A SentencePiece checkpoint is refused on its tokenizer_type alone, so these bytes are never parsed.
    spm = {k: v for k, v in good.items() if k != "tokenizer_json"}
    torch.save({**spm, "tokenizer_type": "sentencepiece", "tokenizer_model": torch.zeros(64, dtype=torch.uint8)},
               ws / "spm.pt")
    spec = json.loads(good["tokenizer_json"])
    spec["pre_tokenizer"]["add_prefix_space"] = True  # splits text unlike GPT-2: llama.cpp would tokenize otherwise
    torch.save({**good, "tokenizer_json": json.dumps(spec)}, ws / "prefixspace.pt")
    (ws / "utf16.txt").write_bytes("To be, or not to be.\n".encode("utf-16"))
    for name in ("metrics.jsonl", "loss.png"):  # an output folder where training writes a file of that name
        (ws / f"out_{name}" / name).mkdir(parents=True)
    (ws / "out_cachefile").mkdir()
    (ws / "out_cachefile" / "token_cache").write_text("not a folder")

    import data  # a tokenizer other than the one inside good.pt
    other = tokenizer.train_bpe(data.scan_corpus(data_file=ws / "corpus.txt"), vocab_size=280)
    (ws / "other_tok.json").write_text(other.to_str(), encoding="utf-8")
    # Hugging Face model folders --init_from cannot use.
    gpt2 = {"model_type": "gpt2", "vocab_size": 300, "n_positions": 32, "n_embd": 32, "n_layer": 2, "n_head": 2}
    for name, config in (("llama_model", {**gpt2, "model_type": "llama"}), ("gpt2_no_tok", gpt2),
                         ("gpt2_erf_gelu", {**gpt2, "activation_function": "gelu"})):
        (ws / name).mkdir()
        (ws / name / "config.json").write_text(json.dumps(config), encoding="utf-8")
    shutil.copy(ws / "other_tok.json", ws / "gpt2_erf_gelu" / "tokenizer.json")
    return ws


def digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def visible_lines(stderr: str) -> list[str]:
    """What a terminal shows: a progress bar redraws itself with \\r and clears itself when done."""
    lines = (line.rsplit("\r", 1)[-1] for line in stderr.split("\n"))
    return [line for line in lines if line.strip()]


# (case id, argv with {ws} for the workspace, words the error line must contain)
TRAIN_CASES = [
    ("data_file missing", ["--data_file", "{ws}/nope.txt"], ["--data_file", "nope.txt", "does not exist"]),
    ("data_file empty", ["--data_file", "{ws}/empty.txt"], ["--data_file", "empty.txt", "empty"]),
    ("data_file binary", ["--data_file", "{ws}/blob.txt"], ["--data_file", "blob.txt", "binary"]),
    ("data_file not UTF-8", ["--data_file", "{ws}/latin1.txt"], ["--data_file", "latin1.txt", "UTF-8"]),
    ("data_file is a folder", ["--data_file", "{ws}/nodocs"], ["--data_file", "--data_dir"]),
    ("data_dir missing", ["--data_dir", "{ws}/nope"], ["--data_dir", "nope", "does not exist"]),
    ("data_dir without text files", ["--data_dir", "{ws}/nodocs"], ["--data_dir", "nodocs", ".txt"]),
    ("data_dir is a file", ["--data_dir", "{ws}/corpus.txt"], ["--data_dir", "--data_file"]),
    ("data_file and data_dir", ["--data_file", "{ws}/corpus.txt", "--data_dir", "{ws}/nodocs"], ["--data_dir"]),
    ("corpus smaller than a block", ["--data_file", "{ws}/short.txt"], ["too small", "--block_size"]),
    ("n_embed not divisible by n_head", ["--n_embed", "30", "--n_head", "4"], ["--n_embed 30", "--n_head 4"]),
    ("n_layer 0", ["--n_layer", "0"], ["--n_layer", "at least 1"]),
    ("negative batch_size", ["--batch_size", "-4"], ["--batch_size", "-4"]),
    ("block_size 0", ["--block_size", "0"], ["--block_size"]),
    ("max_steps 0", ["--max_steps", "0"], ["--max_steps"]),
    ("eval_interval 0", ["--eval_interval", "0"], ["--eval_interval"]),
    ("warmup longer than training", ["--warmup_steps", "50", "--max_steps", "10"], ["--warmup_steps 50", "--max_steps"]),
    ("vocab_size below bytes + specials", ["--vocab_size", "100"], ["--vocab_size", "at least 260", "100"]),
    ("unknown device", ["--device", "tpu"], ["--device", "tpu"]),
    ("lr not a number", ["--lr", "nan"], ["--lr"]),
    ("dropout 1", ["--dropout", "1"], ["--dropout"]),
    ("attn_dropout negative", ["--attn_dropout", "-0.1"], ["--attn_dropout", "-0.1"]),
    ("attn_dropout nan", ["--attn_dropout", "nan"], ["--attn_dropout"]),
    ("dropout_after negative", ["--dropout_after", "-1"], ["--dropout_after", "-1"]),
    ("dropout_after inf", ["--dropout_after", "inf"], ["--dropout_after", "inf", "finite"]),
    ("dropout_below negative", ["--dropout_below", "-1"], ["--dropout_below", "-1"]),
    ("dropout_below nan", ["--dropout_below", "nan"], ["--dropout_below", "nan", "finite"]),
    ("negative grad_clip", ["--grad_clip", "-1"], ["--grad_clip"]),
    ("max_bad_steps 0", ["--max_bad_steps", "0"], ["--max_bad_steps"]),
    ("max_steps not an integer", ["--max_steps", "ten"], ["--max_steps", "ten"]),
    ("unknown flag", ["--layers", "4"], ["--layers"]),
    ("tokenizer missing", ["--tokenizer", "{ws}/nope.json"], ["--tokenizer", "nope.json"]),
    ("tokenizer not a tokenizer", ["--tokenizer", "{ws}/corpus.txt"], ["--tokenizer", "corpus.txt"]),
    ("tokenizer_path under a file", ["--tokenizer_path", "{ws}/corpus.txt/tok.json"], ["--tokenizer_path"]),
    ("out_dir is a file", ["--out_dir", "{ws}/corpus.txt"], ["--out_dir", "corpus.txt", "not a folder"]),
    ("resume missing", ["--resume", "{ws}/nope.pt"], ["--resume", "nope.pt", "does not exist"]),
    ("resume default missing", ["--resume", "--out_dir", "{ws}/nodocs"], ["--resume", "mini_gpt_last.pt"]),
    ("resume a folder", ["--resume", "{ws}/nodocs"], ["--resume", "nodocs", "folder"]),
    ("resume bare state_dict", ["--resume", "{ws}/state_dict.pt"], ["--resume", "state_dict.pt", "state_dict"]),
    ("resume foreign", ["--resume", "{ws}/foreign.pt"], ["--resume", "foreign.pt", "another program"]),
    ("resume truncated", ["--resume", "{ws}/truncated.pt"], ["--resume", "truncated.pt", "truncated"]),
    ("resume random bytes", ["--resume", "{ws}/random.pt"], ["--resume", "random.pt"]),
    ("resume future version", ["--resume", "{ws}/future.pt"], ["--resume", "future.pt", "newer"]),
    ("resume crafted pickle", ["--resume", "{ws}/evil.pt"], ["--resume", "evil.pt", "refusing"]),
    ("resume without resume state", ["--resume", "{ws}/old.pt"], ["--resume", "old.pt", "rng"]),
    ("resume other n_layer", ["--resume", "{ws}/good.pt", "--n_layer", "3"], ["--n_layer 3", "--n_layer 2"]),
    ("resume other vocab_size", ["--resume", "{ws}/good.pt", "--vocab_size", "400"], ["--vocab_size 400"]),
    ("resume other min_frequency", ["--resume", "{ws}/good.pt", "--max_steps", "50", "--min_frequency", "8"],
     ["--min_frequency 8", "conflicts", "--min_frequency 0"]),
    ("resume finished run", ["--resume", "{ws}/good.pt"], ["--max_steps 40", "step 40"]),
    ("resume other corpus", ["--resume", "{ws}/good.pt", "--max_steps", "50", "--data_file", "{ws}/corpus.txt"],
     ["--data_file", "corpus.txt", "not the corpus"]),
    ("resume other tokenizer", ["--resume", "{ws}/good.pt", "--max_steps", "50", "--tokenizer", "{ws}/other_tok.json"],
     ["--tokenizer", "other_tok.json"]),
    ("resume then warmup too long", ["--resume", "{ws}/good.pt", "--max_steps", "50", "--warmup_steps", "60"],
     ["--warmup_steps 60"]),
    # Float flags: non-finite or absurd values, fresh or on --resume.
    ("grad_clip inf", ["--grad_clip", "inf"], ["--grad_clip", "inf", "finite"]),
    ("grad_clip nan", ["--grad_clip", "nan"], ["--grad_clip", "nan", "finite"]),
    ("weight_decay nan", ["--weight_decay", "nan"], ["--weight_decay", "finite"]),
    ("resume with weight_decay inf", ["--resume", "{ws}/good.pt", "--max_steps", "50", "--weight_decay", "inf"],
     ["--weight_decay", "finite"]),
    ("lr 1e300", ["--lr", "1e300"], ["--lr", "up to 10"]),
    ("muon_lr 1e6", ["--muon_lr", "1e6"], ["--muon_lr", "up to 10"]),
    ("lr x weight_decay above 1", ["--lr", "5", "--weight_decay", "0.5"], ["--weight_decay 0.5", "--lr 5.0"]),
    ("negative min_lr_factor", ["--min_lr_factor", "-0.1"], ["--min_lr_factor"]),
    ("max_time negative", ["--max_time", "-5"], ["--max_time", "negative"]),
    ("max_time nan", ["--max_time", "nan"], ["--max_time", "finite"]),
    ("max_time inf", ["--max_time", "inf"], ["--max_time", "finite"]),
    # Integer flags: out of range, however large.
    ("seed above 64 bits", ["--seed", "18446744073709551616"], ["--seed", "at most"]),
    ("negative seed", ["--seed", "-1"], ["--seed", "at least 0"]),
    ("block_size huge", ["--block_size", "100000000"], ["--block_size", "at most 65,536"]),
    ("vocab_size huge", ["--vocab_size", "10000000"], ["--vocab_size", "at most 1,000,000"]),
    ("negative min_frequency", ["--min_frequency", "-1"], ["--min_frequency", "at least 0"]),
    ("min_frequency huge", ["--min_frequency", "10000000000"], ["--min_frequency", "at most"]),
    ("min_frequency not an integer", ["--min_frequency", "nan"], ["--min_frequency", "nan"]),
    ("min_frequency with SentencePiece", ["--min_frequency", "8", "--tokenizer_type", "sentencepiece"],
     ["--min_frequency", "byte-level BPE only", "sentencepiece"]),
    ("batch_size huge", ["--batch_size", "10000000000"], ["--batch_size", "at most"]),
    ("negative warmup", ["--warmup_steps", "-1"], ["--warmup_steps", "at least 0"]),
    # Paths: a folder where a file goes, a file where a folder goes, text that is not UTF-8.
    ("data_file UTF-16", ["--data_file", "{ws}/utf16.txt"], ["--data_file", "utf16.txt", "UTF-16", "iconv"]),
    ("tokenizer a folder", ["--tokenizer", "{ws}/nodocs"], ["--tokenizer", "nodocs", "is a folder"]),
    ("tokenizer_path a folder", ["--tokenizer_path", "{ws}/nodocs"], ["--tokenizer_path", "nodocs", "is a folder"]),
    ("plot_only a folder", ["--plot_only", "{ws}/nodocs"], ["nodocs", "is a folder"]),
    ("metrics.jsonl a folder", ["--out_dir", "{ws}/out_metrics.jsonl"], ["--out_dir", "metrics.jsonl", "is a folder"]),
    ("loss.png a folder", ["--out_dir", "{ws}/out_loss.png"], ["--out_dir", "loss.png", "is a folder"]),
    ("token_cache a file", ["--out_dir", "{ws}/out_cachefile"], ["--out_dir", "token_cache", "--cache_dir"]),
    # Resuming: settings that cannot change, a spent time budget, damaged or crafted checkpoints.
    ("resume other tokenizer_type", ["--resume", "{ws}/good.pt", "--max_steps", "50", "--tokenizer_type",
                                     "sentencepiece"], ["--tokenizer_type sentencepiece", "conflicts"]),
    ("resume other tokenizer_path", ["--resume", "{ws}/good.pt", "--max_steps", "50", "--tokenizer_path",
                                     "{ws}/t.json"], ["--tokenizer_path", "conflicts"]),
    ("resume time budget spent", ["--resume", "{ws}/timed.pt", "--max_steps", "100"],
     ["--resume", "timed.pt", "--max_time", "already trained"]),
    ("resume unparsable tokenizer_json", ["--resume", "{ws}/badtok.pt", "--max_steps", "50"],
     ["--resume", "badtok.pt", "damaged", "tokenizer_json"]),
    ("resume unknown tokenizer_type", ["--resume", "{ws}/oddtok.pt", "--max_steps", "50"],
     ["--resume", "oddtok.pt", "damaged", "wordpiece"]),
    ("resume args None", ["--resume", "{ws}/noargs.pt", "--max_steps", "50"], ["--resume", "noargs.pt", "damaged"]),
    ("resume step not a number", ["--resume", "{ws}/badstep.pt", "--max_steps", "50"],
     ["--resume", "badstep.pt", "damaged", "step"]),
    ("resume config a list", ["--resume", "{ws}/listconfig.pt"], ["--resume", "listconfig.pt", "damaged", "config"]),
    ("resume wrong-shape wte", ["--resume", "{ws}/badshape.pt"], ["--resume", "badshape.pt", "damaged", "wte"]),
    # Starting from existing weights.
    ("init_from missing", ["--init_from", "{ws}/nope.pt"], ["--init_from", "nope.pt", "does not exist"]),
    ("init_from a folder without config.json", ["--init_from", "{ws}/nodocs"], ["--init_from", "nodocs", "config.json"]),
    ("init_from another model type", ["--init_from", "{ws}/llama_model"], ["--init_from", "'llama' model", "GPT-2"]),
    ("init_from an option GPT-2 layout lacks", ["--init_from", "{ws}/gpt2_erf_gelu"],
     ["--init_from", "activation_function='gelu'", "cannot reproduce"]),
    ("init_from without a tokenizer", ["--init_from", "{ws}/gpt2_no_tok"], ["--init_from", "tokenizer.json"]),
    ("init_from and resume", ["--init_from", "{ws}/good.pt", "--resume", "{ws}/good.pt"],
     ["--resume and --init_from cannot be used together"]),
    ("init_from other n_layer", ["--init_from", "{ws}/good.pt", "--n_layer", "3"], ["--n_layer 3", "conflicts", "--n_layer 2"]),
    ("init_from longer context", ["--init_from", "{ws}/good.pt", "--block_size", "64"],
     ["--block_size 64", "larger than the context", "32"]),
    ("init_from with a tokenizer", ["--init_from", "{ws}/good.pt", "--tokenizer", "{ws}/other_tok.json"],
     ["--tokenizer", "cannot be used with --init_from"]),
    ("init_from with min_frequency", ["--init_from", "{ws}/good.pt", "--min_frequency", "8"],
     ["--min_frequency", "cannot be used with --init_from"]),
    ("init_from damaged checkpoint", ["--init_from", "{ws}/badshape.pt"], ["--init_from", "badshape.pt", "damaged"]),
    ("init_from crafted pickle", ["--init_from", "{ws}/evil.pt"], ["--init_from", "evil.pt", "refusing"]),
    # Distilling a teacher.
    ("distill_from missing", ["--distill_from", "{ws}/nope.pt"], ["--distill_from", "nope.pt", "does not exist"]),
    ("distill_from crafted pickle", ["--distill_from", "{ws}/evil.pt"], ["--distill_from", "evil.pt", "refusing"]),
    ("distill_from longer context", ["--distill_from", "{ws}/good.pt", "--block_size", "64"],
     ["--block_size 64", "longer than the context", "32"]),
    ("distill_from with a tokenizer", ["--distill_from", "{ws}/good.pt", "--tokenizer", "{ws}/other_tok.json"],
     ["--tokenizer", "cannot be used with --distill_from"]),
    ("distill_from other vocab_size", ["--distill_from", "{ws}/good.pt", "--vocab_size", "500"],
     ["--vocab_size", "cannot be used with --distill_from"]),
    ("distill_from where the run saves",
     ["--distill_from", "{ws}/out_self/bpe_best.pt", "--out_dir", "{ws}/out_self"],
     ["--distill_from", "bpe_best.pt", "overwritten", "--out_dir"]),
    ("distill_weight 0", ["--distill_from", "{ws}/good.pt", "--distill_weight", "0"], ["--distill_weight", "(0, 1]"]),
    ("distill_weight nan", ["--distill_from", "{ws}/good.pt", "--distill_weight", "nan"], ["--distill_weight", "finite"]),
    ("distill_weight without distill_from", ["--distill_weight", "0.3"], ["--distill_weight needs --distill_from"]),
    ("resume a run whose teacher is gone", ["--resume", "{ws}/orphan.pt", "--max_steps", "50"],
     ["--resume", "orphan.pt", "--distill_from", "gone.pt", "does not exist", "where that teacher is now"]),
]

SAMPLE_CASES = [
    ("ckpt missing", ["--ckpt", "{ws}/nope.pt"], ["--ckpt", "nope.pt", "does not exist"]),
    ("ckpt default missing", [], ["--ckpt", "bpe_best.pt", "does not exist"]),
    ("ckpt a folder", ["--ckpt", "{ws}/nodocs"], ["--ckpt", "nodocs", "folder"]),
    ("ckpt bare state_dict", ["--ckpt", "{ws}/state_dict.pt"], ["--ckpt", "state_dict.pt", "state_dict"]),
    ("ckpt foreign", ["--ckpt", "{ws}/foreign.pt"], ["--ckpt", "foreign.pt", "another program"]),
    ("ckpt truncated", ["--ckpt", "{ws}/truncated.pt"], ["--ckpt", "truncated.pt", "truncated"]),
    ("ckpt random bytes", ["--ckpt", "{ws}/random.pt"], ["--ckpt", "random.pt"]),
    ("ckpt text file", ["--ckpt", "{ws}/corpus.txt"], ["--ckpt", "corpus.txt"]),
    ("ckpt future version", ["--ckpt", "{ws}/future.pt"], ["--ckpt", "future.pt", "newer"]),
    ("ckpt crafted pickle", ["--ckpt", "{ws}/evil.pt"], ["--ckpt", "evil.pt", "refusing"]),
    ("ckpt incomplete", ["--ckpt", "{ws}/incomplete.pt"], ["--ckpt", "incomplete.pt", "tokenizer_json"]),
    ("ckpt damaged", ["--ckpt", "{ws}/damaged.pt"], ["damaged.pt", "damaged"]),
    ("negative temperature", ["--temperature", "-0.5"], ["--temperature", "-0.5"]),
    ("top_p 0", ["--top_p", "0"], ["--top_p", "(0, 1]"]),
    ("top_p above 1", ["--top_p", "1.5"], ["--top_p", "1.5"]),
    ("negative top_k", ["--top_k", "-1"], ["--top_k"]),
    ("max_new_tokens 0", ["--max_new_tokens", "0"], ["--max_new_tokens"]),
    ("num_samples 0", ["--num_samples", "0"], ["--num_samples"]),
    ("unknown device", ["--device", "tpu"], ["--device", "tpu"]),
    ("temperature not a number", ["--temperature", "hot"], ["--temperature", "hot"]),
    ("prompt longer than the context", ["--ckpt", "{ws}/good.pt", "--prompt", "to be or not " * 40],
     ["--prompt", "context of 32"]),
    ("prompt not UTF-8", ["--ckpt", "{ws}/good.pt", "--prompt", "caf\udce9"], ["--prompt", "UTF-8"]),
    ("temperature nan", ["--temperature", "nan"], ["--temperature", "finite"]),
    ("top_p nan", ["--top_p", "nan"], ["--top_p", "finite"]),
    ("seed above 64 bits", ["--seed", "18446744073709551616"], ["--seed", "at most"]),
    ("ckpt unparsable tokenizer_json", ["--ckpt", "{ws}/badtok.pt"], ["--ckpt", "badtok.pt", "damaged"]),
    ("ckpt unknown tokenizer_type", ["--ckpt", "{ws}/oddtok.pt"], ["--ckpt", "oddtok.pt", "wordpiece"]),
    ("ckpt config a list", ["--ckpt", "{ws}/listconfig.pt"], ["--ckpt", "listconfig.pt", "damaged"]),
    ("ckpt wrong-shape wte", ["--ckpt", "{ws}/badshape.pt"], ["--ckpt", "badshape.pt", "wte"]),
    ("repetition_penalty 0", ["--repetition_penalty", "0"], ["--repetition_penalty", "more than 0"]),
    ("negative repetition_penalty", ["--repetition_penalty", "-1"], ["--repetition_penalty", "more than 0"]),
    ("min_p above 1", ["--min_p", "1.5"], ["--min_p", "[0, 1]"]),
    ("negative min_p", ["--min_p", "-0.1"], ["--min_p", "[0, 1]"]),
    ("empty stop", ["--stop", ""], ["--stop", "empty"]),
    ("prompt and prompt_file", ["--prompt", "x", "--prompt_file", "{ws}/short.txt"], ["--prompt_file", "--prompt"]),
    ("prompt_file missing", ["--ckpt", "{ws}/good.pt", "--prompt_file", "{ws}/nope.txt"],
     ["--prompt_file", "nope.txt", "does not exist"]),
    ("prompt_file a folder", ["--ckpt", "{ws}/good.pt", "--prompt_file", "{ws}/nodocs"], ["--prompt_file", "folder"]),
    ("prompt_file not UTF-8", ["--ckpt", "{ws}/good.pt", "--prompt_file", "{ws}/latin1.txt"],
     ["--prompt_file", "latin1.txt", "UTF-8"]),
    ("prompt_file longer than the context", ["--ckpt", "{ws}/good.pt", "--prompt_file", "{ws}/corpus.txt"],
     ["--prompt_file", "context of 32"]),
    ("chat without interactive", ["--chat"], ["--chat", "--interactive"]),
    ("interactive with a prompt", ["--interactive", "--prompt", "x"], ["--interactive", "--prompt"]),
]

SCORE_CASES = [
    ("nothing to score", ["--ckpt", "{ws}/good.pt"], ["one of --file, --data_dir or --text"]),
    ("two texts to score", ["--ckpt", "{ws}/good.pt", "--file", "{ws}/corpus.txt", "--text", "x"],
     ["only one of", "--file", "--text"]),
    ("empty text", ["--ckpt", "{ws}/good.pt", "--text", ""], ["--text", "empty"]),
    ("text not UTF-8", ["--ckpt", "{ws}/good.pt", "--text", "caf\udce9"], ["--text", "UTF-8"]),
    ("ckpt missing", ["--ckpt", "{ws}/nope.pt", "--text", "x"], ["--ckpt", "nope.pt", "does not exist"]),
    ("ckpt crafted pickle", ["--ckpt", "{ws}/evil.pt", "--text", "x"], ["--ckpt", "evil.pt", "refusing"]),
    ("ckpt wrong-shape wte", ["--ckpt", "{ws}/badshape.pt", "--text", "x"], ["--ckpt", "badshape.pt", "wte"]),
    ("file missing", ["--ckpt", "{ws}/good.pt", "--file", "{ws}/nope.txt"], ["--file", "nope.txt", "does not exist"]),
    ("file binary", ["--ckpt", "{ws}/good.pt", "--file", "{ws}/blob.txt"], ["--file", "blob.txt", "binary"]),
    ("file is a folder", ["--ckpt", "{ws}/good.pt", "--file", "{ws}/nodocs"], ["--file", "nodocs", "--data_dir"]),
    ("data_dir without text files", ["--ckpt", "{ws}/good.pt", "--data_dir", "{ws}/nodocs"],
     ["--data_dir", "nodocs", "no usable text files"]),
    ("stride 0", ["--ckpt", "{ws}/good.pt", "--text", "x", "--stride", "0"], ["--stride", "at least 1"]),
    ("stride longer than the context", ["--ckpt", "{ws}/good.pt", "--text", "x", "--stride", "64"],
     ["--stride 64", "context of 32"]),
    ("unknown device", ["--ckpt", "{ws}/good.pt", "--text", "x", "--device", "tpu"], ["--device", "tpu"]),
]

EXPORT_CASES = [
    ("ckpt missing", ["--ckpt", "{ws}/nope.pt", "--out", "{ws}/hf"], ["--ckpt", "nope.pt", "does not exist"]),
    ("ckpt unparsable tokenizer_json", ["--ckpt", "{ws}/badtok.pt", "--out", "{ws}/hf"], ["badtok.pt", "damaged"]),
    ("ckpt config a list", ["--ckpt", "{ws}/listconfig.pt", "--out", "{ws}/hf"], ["listconfig.pt", "damaged"]),
    ("ckpt wrong-shape wte", ["--ckpt", "{ws}/badshape.pt", "--out", "{ws}/hf"], ["badshape.pt", "wte"]),
    ("out is a file", ["--ckpt", "{ws}/good.pt", "--out", "{ws}/corpus.txt"], ["--out", "corpus.txt", "is a file"]),
    ("out under a file", ["--ckpt", "{ws}/good.pt", "--out", "{ws}/corpus.txt/hf"], ["--out", "corpus.txt", "a file"]),
    ("out not empty", ["--ckpt", "{ws}/good.pt", "--out", "{ws}/nodocs"], ["--out", "nodocs", "--overwrite"]),
]

GGUF_CASES = [
    ("ckpt missing", ["--ckpt", "{ws}/nope.pt", "--out", "{ws}/m.gguf"], ["--ckpt", "nope.pt", "does not exist"]),
    ("ckpt unparsable tokenizer_json", ["--ckpt", "{ws}/badtok.pt", "--out", "{ws}/m.gguf"], ["badtok.pt", "damaged"]),
    ("ckpt config a list", ["--ckpt", "{ws}/listconfig.pt", "--out", "{ws}/m.gguf"], ["listconfig.pt", "damaged"]),
    ("ckpt wrong-shape wte", ["--ckpt", "{ws}/badshape.pt", "--out", "{ws}/m.gguf"], ["badshape.pt", "wte"]),
    ("ckpt SentencePiece", ["--ckpt", "{ws}/spm.pt", "--out", "{ws}/m.gguf"],
     ["spm.pt", "sentencepiece", "byte-level BPE"]),
    ("ckpt without biases", ["--ckpt", "{ws}/nobias.pt", "--out", "{ws}/m.gguf"], ["nobias.pt", "bias=False"]),
    ("ckpt tokenizer with a prefix space", ["--ckpt", "{ws}/prefixspace.pt", "--out", "{ws}/m.gguf"],
     ["prefixspace.pt", "prefix space", "llama.cpp"]),
    ("out exists", ["--ckpt", "{ws}/good.pt", "--out", "{ws}/corpus.txt"], ["--out", "corpus.txt", "--overwrite"]),
    ("out is the checkpoint", ["--ckpt", "{ws}/good.pt", "--out", "{ws}/good.pt", "--overwrite"],
     ["--out", "good.pt", "checkpoint itself"]),
    ("out is a folder", ["--ckpt", "{ws}/good.pt", "--out", "{ws}/nodocs"], ["--out", "nodocs", "is a folder"]),
    ("out under a file", ["--ckpt", "{ws}/good.pt", "--out", "{ws}/corpus.txt/m.gguf"],
     ["--out", "corpus.txt", "is a file, not a folder"]),
    ("out not writable", ["--ckpt", "{ws}/good.pt", "--out", "/sys/m.gguf"],  # read-only even for root
     ["--out", "/sys/m.gguf", "cannot be written"]),
    ("outtype unknown", ["--ckpt", "{ws}/good.pt", "--out", "{ws}/m.gguf", "--outtype", "q4_0"],
     ["--outtype", "q4_0", "f32", "f16"]),
]

# Safe defaults, so that a case which wrongly passes cannot write outside the workspace.
TRAIN_BASE = ["--out_dir", "{ws}", "--tokenizer_path", "{ws}/new_tok.json", *TINY_MODEL_ARGS, "--max_steps", "5",
              "--warmup_steps", "0"]


def run_case(main, argv, ws, monkeypatch, capsys):
    monkeypatch.chdir(ws)  # relative defaults (bpe/, ./bpe_best.pt) land in the workspace too
    before = digest(ws)
    try:
        code = main([a.replace("{ws}", str(ws)) for a in argv])
    except SystemExit as exc:  # argparse
        code = exc.code
    _, err = capsys.readouterr()
    assert digest(ws) == before, "an input error changed or created a file"
    return code, err


def check(code, err, script, words):
    lines = visible_lines(err)
    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{script}: error: ")
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.mark.parametrize("argv, words", [c[1:] for c in TRAIN_CASES], ids=[c[0] for c in TRAIN_CASES])
def test_train_bad_input(argv, words, ws, monkeypatch, capsys):
    # A flag typed twice: the case's own value wins over the base (argparse keeps the last one).
    base = [] if argv[:1] == ["--resume"] else TRAIN_BASE
    code, err = run_case(train_bpe.main, base + argv, ws, monkeypatch, capsys)
    check(code, err, "train_bpe.py", words)
    assert not (ws / "pwned").exists()


@pytest.mark.parametrize("argv, words", [c[1:] for c in SAMPLE_CASES], ids=[c[0] for c in SAMPLE_CASES])
def test_sample_bad_input(argv, words, ws, monkeypatch, capsys):
    code, err = run_case(sample_bpe.main, ["--device", "cpu", "--max_new_tokens", "4", *argv], ws, monkeypatch, capsys)
    check(code, err, "sample_bpe.py", words)
    assert not (ws / "pwned").exists()


@pytest.mark.parametrize("argv, words", [c[1:] for c in GGUF_CASES], ids=[c[0] for c in GGUF_CASES])
def test_export_gguf_bad_input(argv, words, ws, monkeypatch, capsys):
    pytest.importorskip("gguf", reason="export needs the gguf extra: pip install gguf==0.19.0")
    code, err = run_case(export_gguf.main, argv, ws, monkeypatch, capsys)
    check(code, err, "export_gguf.py", words)


@pytest.mark.parametrize("argv, words", [c[1:] for c in SCORE_CASES], ids=[c[0] for c in SCORE_CASES])
def test_score_bad_input(argv, words, ws, monkeypatch, capsys):
    code, err = run_case(score_bpe.main, argv, ws, monkeypatch, capsys)
    check(code, err, "score_bpe.py", words)
    assert not (ws / "pwned").exists()


@pytest.mark.parametrize("argv, words", [c[1:] for c in EXPORT_CASES], ids=[c[0] for c in EXPORT_CASES])
def test_export_bad_input(argv, words, ws, monkeypatch, capsys):
    pytest.importorskip("safetensors", reason="export needs the safetensors extra")
    code, err = run_case(export_hf.main, argv, ws, monkeypatch, capsys)
    check(code, err, "export_hf.py", words)


def readme_matrix_rows() -> list[tuple[str, str]]:
    """(script, input) for each row of the README's "When an input is wrong" table."""
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("## When an input is wrong", 1)[1]
    section = section.split("\n## ", 1)[0]
    rows = [[cell.strip() for cell in line.split("|")[1:3]] for line in section.splitlines() if line.startswith("| ")]
    return [(command.strip("`").split()[0], name) for name, command in rows if command.startswith("`")]


def test_the_readme_table_lists_exactly_the_cases_tested_here():
    cases = ([("train_bpe.py", c[0]) for c in TRAIN_CASES] + [("sample_bpe.py", c[0]) for c in SAMPLE_CASES]
             + [("score_bpe.py", c[0]) for c in SCORE_CASES] + [("export_hf.py", c[0]) for c in EXPORT_CASES]
             + [("export_gguf.py", c[0]) for c in GGUF_CASES])
    assert len(cases) == len(set(cases))  # each id names one case of its script
    assert sorted(readme_matrix_rows()) == sorted(cases)


def test_a_crafted_pickle_is_refused_and_never_runs(tmp_path, capsys):
    live, marker = tmp_path / "live.pt", tmp_path / "created-by-live"
    torch.save({"model": CreatesFile(marker)}, live)
    torch.load(live, weights_only=False)  # proof that the payload works when trusted
    assert marker.exists()

    evil, marker = tmp_path / "evil.pt", tmp_path / "created-by-evil"
    torch.save({"model": CreatesFile(marker)}, evil)
    with pytest.raises(CheckpointError, match="could run code"):
        load_checkpoint(evil)
    assert sample_bpe.main(["--ckpt", str(evil), "--device", "cpu"]) == 2
    assert "refusing" in capsys.readouterr().err
    assert not marker.exists()


def test_an_empty_prompt_starts_from_bos(tiny_run, capsys):
    ckpt = tiny_run / trainer.BEST_NAME
    assert sample_bpe.main(["--ckpt", str(ckpt), "--prompt", "", "--temperature", "0", "--max_new_tokens", "12",
                            "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    model, tok, specials, _ = load_model(ckpt, "cpu")
    assert specials.start == 2  # <bos> in the tokenizers we train
    ids = [int(t) for t in model.generate(torch.tensor([[specials.start]]), 12, temperature=0)]
    assert text == tok.decode(ids) + "\n"


def test_old_checkpoints_without_resume_state_still_sample(ws, capsys):
    assert sample_bpe.main(["--ckpt", str(ws / "old.pt"), "--max_new_tokens", "3", "--device", "cpu"]) == 0
