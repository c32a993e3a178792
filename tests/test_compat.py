"""A checkpoint written before today's format (tests/fixtures, from main at 6555438) keeps working."""

import shutil

import pytest
import torch

import export_gguf
import export_hf
import sample_bpe
import train_bpe
import trainer
from checkpoint import load_checkpoint, load_model

from helpers import OLD_RUN


@pytest.fixture
def old_run(tmp_path):
    """A copy of the old run's folder: resuming writes beside the checkpoint."""
    shutil.copytree(OLD_RUN, tmp_path / "old")
    return tmp_path / "old"


def test_it_loads_with_the_special_ids_of_its_time(old_run):
    model, tok, specials, state = load_model(old_run / trainer.LAST_NAME)
    assert "special_ids" not in state  # written before special ids were stored
    assert (specials.pad, specials.unk, specials.bos, specials.eos) == (0, 1, 2, 3)
    assert tok.get_vocab_size() == model.config.vocab_size == 300


def test_it_samples(old_run, capsys):
    code = sample_bpe.main(["--ckpt", str(old_run / trainer.LAST_NAME), "--prompt", "", "--temperature", "0",
                            "--max_new_tokens", "12", "--device", "cpu"])
    assert code == 0
    model, tok, specials, _ = load_model(old_run / trainer.LAST_NAME)
    ids = [int(t) for t in model.generate(torch.tensor([[2]]), 12, temperature=0)]  # from <bos>, id 2
    assert capsys.readouterr().out == tok.decode(ids) + "\n"


def test_it_resumes_and_the_new_checkpoint_stores_its_special_ids(old_run, capsys):
    before = load_checkpoint(old_run / trainer.LAST_NAME)
    code = train_bpe.main(["--resume", str(old_run / trainer.LAST_NAME), "--data_file", str(old_run / "tiny.txt"),
                           "--max_steps", "24", "--eval_interval", "2"])
    assert code == 0, capsys.readouterr().err
    after = load_checkpoint(old_run / trainer.LAST_NAME)
    assert after["step"] == 24 and after["tokenizer_json"] == before["tokenizer_json"]
    assert after["special_ids"] == {"eos": 3, "bos": 2, "pad": 0, "unk": 1}
    assert after["args"]["cpu_bf16"] is False  # trained in fp32 then, so it continues in fp32


def test_it_exports(old_run, tmp_path):
    pytest.importorskip("safetensors", reason="export needs the safetensors extra")
    out = tmp_path / "hf"
    assert export_hf.main(["--ckpt", str(old_run / trainer.LAST_NAME), "--out", str(out)]) == 0
    assert (out / "model.safetensors").is_file()
    assert '"eos_token": "<eos>"' in (out / "special_tokens_map.json").read_text()


def test_it_exports_as_gguf(old_run, tmp_path):
    gguf = pytest.importorskip("gguf", reason="export needs the gguf extra: pip install gguf==0.19.0")
    out = tmp_path / "model.gguf"
    assert export_gguf.main(["--ckpt", str(old_run / trainer.LAST_NAME), "--out", str(out)]) == 0
    reader = gguf.GGUFReader(out)
    ids = [reader.fields[f"tokenizer.ggml.{name}_token_id"].contents() for name in ("bos", "eos", "padding")]
    assert ids == [2, 3, 0]  # found by name: this checkpoint predates stored special ids
