"""--init_from: start from our checkpoint, a Hugging Face GPT-2 folder or a hub name; fine-tune; export back."""

import json
import sys

import pytest
import torch

import export_gguf
import export_hf
import metrics
import pretrained
import sample_bpe
import token_cache
import train_bpe
import trainer
from checkpoint import load_checkpoint, load_model
from data import scan_corpus
from model import GPT

from helpers import TINY_TEXT

# Batch and schedule flags only: the model's shape comes from the source.
RUN_ARGS = ["--batch_size", "8", "--grad_accum_steps", "1", "--device", "cpu", "--no-amp", "--eval_iters", "2"]


def gpt2_style_tokenizer(text: str, vocab_size: int):
    """A byte-level BPE like GPT-2's: no specials while training, then <|endoftext|> appended as the last id."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer_ = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                   show_progress=False)
    tok.train_from_iterator([text], trainer=trainer_)
    tok.add_special_tokens(["<|endoftext|>"])
    return tok


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    """A tiny random GPT2LMHeadModel saved twice: with save_pretrained (model.safetensors), and as the original
    GPT-2 release's pytorch_model.bin (a pickled state dict of the GPT2Model: no "transformer." prefix, no
    lm_head, the causal mask stored as h.N.attn.bias)."""
    transformers = pytest.importorskip("transformers", reason="making a GPT-2 folder needs the transformers extra")
    tok = gpt2_style_tokenizer(TINY_TEXT, 300)
    eot = tok.token_to_id("<|endoftext|>")
    config = transformers.GPT2Config(vocab_size=tok.get_vocab_size(), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=eot, eos_token_id=eot)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    folders = {kind: tmp_path_factory.mktemp(f"gpt2-{kind}") for kind in ("safetensors", "bin")}
    model.save_pretrained(folders["safetensors"])
    model.config.save_pretrained(folders["bin"])
    mask = torch.tril(torch.ones(64, 64, dtype=torch.bool))[None, None]
    legacy = {k.removeprefix("transformer."): v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    legacy |= {f"h.{i}.attn.bias": mask for i in range(2)}
    torch.save(legacy, folders["bin"] / "pytorch_model.bin")
    for folder in folders.values():
        tok.save(str(folder / "tokenizer.json"))
    return model, tok, folders


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["safetensors", "bin"])
def test_a_gpt2_folder_gives_the_logits_transformers_gives(hf_folders, kind):
    hf_model, tok, folders = hf_folders
    assert (folders[kind] / ("model.safetensors" if kind == "safetensors" else "pytorch_model.bin")).is_file()
    source = pretrained.load_source(str(folders[kind]))
    ours = GPT(source.config).eval()
    ours.load_state_dict(source.weights)
    ids = torch.tensor([tok.encode(TINY_TEXT[:300]).ids[:64]])
    with torch.no_grad():
        theirs, mine = hf_model(ids).logits, ours(ids)[0]
    # The same float32 operations in another order (fused vs separate matmuls, another attention kernel):
    # differences of a few ulps of the activations, far below 1e-4 of the logits' scale.
    torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-4 * theirs.abs().max().item())


@pytest.mark.slow
def test_fine_tune_a_gpt2_folder_then_sample_and_export_it_back(hf_folders, tiny_file, tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    _, tok, folders = hf_folders
    out = tmp_path / "run"
    code = train_bpe.main(["--init_from", str(folders["safetensors"]), "--data_file", str(tiny_file),
                           "--out_dir", str(out), *RUN_ARGS, "--max_steps", "6", "--eval_interval", "3",
                           "--block_size", "48"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "init_from: Hugging Face GPT-2 folder" in printed and "context cropped to 48 tokens (of 64)" in printed
    state = load_checkpoint(out / trainer.BEST_NAME)
    assert state["init_from"]["kind"] == "hf_folder" and state["config"]["block_size"] == 48
    eot = tok.token_to_id("<|endoftext|>")
    assert state["special_ids"] == {"eos": eot, "bos": eot, "pad": None, "unk": None}
    start = [r for r in metrics.read_metrics(out / metrics.METRICS_NAME) if r["kind"] == "start"][0]
    assert start["init_from"]["source"] == str(folders["safetensors"])

    assert sample_bpe.main(["--ckpt", str(out / trainer.BEST_NAME), "--prompt", "ROMEO:", "--temperature", "0",
                            "--max_new_tokens", "10", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.startswith("ROMEO:")

    hf_out = tmp_path / "hf"
    assert export_hf.main(["--ckpt", str(out / trainer.BEST_NAME), "--out", str(hf_out)]) == 0
    exported = transformers.AutoModelForCausalLM.from_pretrained(hf_out).eval()
    assert json.loads((hf_out / "special_tokens_map.json").read_text())["eos_token"] == "<|endoftext|>"
    ours, *_ = load_model(out / trainer.BEST_NAME)
    ids = torch.tensor([tok.encode("ROMEO: what light").ids])
    with torch.no_grad():
        torch.testing.assert_close(exported(ids).logits, ours(ids)[0], rtol=0, atol=1e-4)

    # ... and to llama.cpp: a GPT-2 tokenizer with its one special token, which starts and ends text.
    gguf = pytest.importorskip("gguf", reason="export needs the gguf extra")
    assert export_gguf.main(["--ckpt", str(out / trainer.BEST_NAME), "--out", str(tmp_path / "m.gguf")]) == 0
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    assert reader.fields["tokenizer.ggml.eos_token_id"].contents() == eot
    assert reader.fields["tokenizer.ggml.bos_token_id"].contents() == eot
    assert reader.fields["tokenizer.ggml.tokens"].contents()[eot] == "<|endoftext|>"


def test_the_first_step_sees_the_source_models_loss_on_the_same_batch(tiny_run, tiny_file, tmp_path):
    source = tiny_run / trainer.BEST_NAME
    out = tmp_path / "ft"
    assert train_bpe.main(["--init_from", str(source), "--data_file", str(tiny_file), "--out_dir", str(out),
                           *RUN_ARGS, "--max_steps", "1", "--log_interval", "1"]) == 0
    [first] = [r for r in metrics.read_metrics(out / metrics.METRICS_NAME) if r["kind"] == "train"]
    model, tok, _, _ = load_model(source)
    model.train()  # as in training (dropout 0 either way)
    cache = token_cache.load_or_build_cache(scan_corpus(data_file=tiny_file), tok, out / "token_cache")
    x, y = cache.token_data(model.config.block_size).get_batch("train", 8, torch.Generator().manual_seed(42))
    with torch.no_grad():
        _, loss = model(x, y)
    assert first["loss"] == pytest.approx(loss.item(), rel=1e-6)  # the same weights on the same batch
    state = load_checkpoint(out / trainer.LAST_NAME)
    assert state["step"] == 1 and state["init_from"]["kind"] == "checkpoint"
    assert state["tokenizer_json"] == load_checkpoint(source)["tokenizer_json"]  # no tokenizer was trained


def test_a_run_started_from_a_checkpoint_resumes_as_any_run(tiny_run, tiny_file, tmp_path):
    out = tmp_path / "ft"
    argv = ["--init_from", str(tiny_run / trainer.BEST_NAME), "--data_file", str(tiny_file), "--out_dir", str(out),
            *RUN_ARGS, "--max_steps", "4", "--eval_interval", "2"]
    assert train_bpe.main(argv) == 0
    assert train_bpe.main(["--resume", str(out / trainer.LAST_NAME), "--max_steps", "6"]) == 0
    state = load_checkpoint(out / trainer.LAST_NAME)
    assert state["step"] == 6 and state["init_from"]["source"] == str(tiny_run / trainer.BEST_NAME)


def test_a_hub_name_is_downloaded_through_huggingface_hub(hf_folders, monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    _, _, folders = hf_folders
    asked = []

    def fake_download(repo_id, allow_patterns=None, **kwargs):  # no network: the files are already here
        asked.append((repo_id, allow_patterns))
        return str(folders["safetensors"])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    source = pretrained.load_source("distilgpt2")
    assert source.kind == "hub" and source.config.n_layer == 2
    assert asked == [("distilgpt2", pretrained.HUB_FILES)]


def test_offline_without_a_cached_copy_is_one_line(monkeypatch, tmp_path, tiny_file, capsys):
    huggingface_hub = pytest.importorskip("huggingface_hub")

    def offline(repo_id, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    code = train_bpe.main(["--init_from", "gpt2", "--data_file", str(tiny_file), "--out_dir", str(tmp_path)])
    [line] = capsys.readouterr().err.splitlines()
    assert code == 2 and "--init_from gpt2" in line and "connect once" in line and "--local-dir" in line


def test_without_huggingface_hub_a_hub_name_says_what_to_install(monkeypatch, tmp_path, tiny_file, capsys):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # makes `import huggingface_hub` fail
    code = train_bpe.main(["--init_from", "gpt2", "--data_file", str(tiny_file), "--out_dir", str(tmp_path)])
    [line] = capsys.readouterr().err.splitlines()
    assert code == 2 and "pip install huggingface_hub" in line


def test_a_source_keeps_its_layout_and_a_typed_other_layout_is_refused(tiny_file, tmp_path, capsys):
    llama = ["--pos_emb", "rope", "--norm", "rmsnorm", "--mlp", "swiglu", "--no-bias"]
    base = tmp_path / "base"
    assert train_bpe.main(["--data_file", str(tiny_file), "--out_dir", str(base), "--tokenizer_path",
                           str(base / "tok.json"), *RUN_ARGS, *llama, "--vocab_size", "300", "--n_layer", "1",
                           "--n_head", "2", "--n_embed", "32", "--block_size", "32", "--warmup_steps", "1",
                           "--max_steps", "2", "--eval_interval", "2"]) == 0
    source = str(base / trainer.BEST_NAME)
    out = tmp_path / "ft"
    assert train_bpe.main(["--init_from", source, "--data_file", str(tiny_file), "--out_dir", str(out),
                           *RUN_ARGS, "--max_steps", "2", "--eval_interval", "2"]) == 0
    config = load_checkpoint(out / trainer.LAST_NAME)["config"]
    assert (config["pos_emb"], config["norm"], config["mlp"], config["bias"]) == ("rope", "rmsnorm", "swiglu", False)
    capsys.readouterr()
    assert train_bpe.main(["--init_from", source, "--data_file", str(tiny_file), "--out_dir", str(tmp_path / "x"),
                           *RUN_ARGS, "--pos_emb", "learned"]) == 2
    err = capsys.readouterr().err
    assert "--pos_emb learned conflicts with --init_from" in err and err.count("\n") == 1, err
