"""export_hf.py: the exported GPT-2 folder generates exactly what sample_bpe.py does; non-GPT-2 models are refused."""

import pytest
import torch

import export_hf
import sample_bpe
import trainer
from checkpoint import load_checkpoint, load_model, save_checkpoint
from model import GPT, GPTConfig

PROMPT, NEW_TOKENS = "ROMEO:", 20  # prompt + new tokens stay within the tiny model's 32-token context


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    pytest.importorskip("safetensors", reason="export needs the safetensors extra")
    out = tmp_path_factory.mktemp("hf") / "hf_model"
    assert export_hf.main(["--ckpt", str(tiny_run / trainer.BEST_NAME), "--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_greedy_continuation_matches_sample_bpe(tiny_run, exported, capsys):
    transformers = pytest.importorskip("transformers", reason="loading the export needs the transformers extra")
    ckpt = str(tiny_run / trainer.BEST_NAME)
    capsys.readouterr()
    assert sample_bpe.main(["--ckpt", ckpt, "--prompt", PROMPT, "--temperature", "0",
                            "--max_new_tokens", str(NEW_TOKENS), "--device", "cpu"]) == 0
    ours = capsys.readouterr().out

    model, info = transformers.AutoModelForCausalLM.from_pretrained(exported, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    tok = transformers.AutoTokenizer.from_pretrained(exported)
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 2, 3)
    prompt_ids = tok(PROMPT, return_tensors="pt").input_ids
    model.generation_config.eos_token_id = None  # sample_bpe.py without --stop_at_eos goes on past <eos> too
    out = model.generate(prompt_ids, max_new_tokens=NEW_TOKENS, do_sample=False)
    assert out.shape == (1, prompt_ids.shape[1] + NEW_TOKENS)
    theirs = PROMPT + tok.decode(out[0, prompt_ids.shape[1]:]) + "\n"
    assert theirs == ours

    # The same logits, not just the same argmax: every weight landed in the right place.
    native, *_ = load_model(ckpt, "cpu")
    with torch.no_grad():
        torch.testing.assert_close(model(out).logits, native(out)[0], atol=1e-4, rtol=1e-4)

    pipe = transformers.pipeline("text-generation", model=str(exported))
    text = pipe(PROMPT, max_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert text.startswith(PROMPT) and ours.startswith(text)


@pytest.mark.parametrize("change, message", [
    ({"bias": False}, "bias=False"),
    ({"rotary": True}, "unknown field(s) rotary"),  # a field this version does not know: refused on load
])
def test_non_gpt2_checkpoints_are_refused(tiny_run, tmp_path, capsys, change, message):
    state = load_checkpoint(tiny_run / trainer.BEST_NAME)
    state["config"] = {**state["config"], **change}
    if "rotary" not in change:  # weights that fit the changed config
        state["model"] = GPT(GPTConfig(**state["config"])).state_dict()
    ckpt = tmp_path / "odd.pt"
    save_checkpoint(ckpt, {k: v for k, v in state.items() if k not in ("format", "format_version")})
    assert export_hf.main(["--ckpt", str(ckpt), "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "hf").exists()


@pytest.mark.slow
def test_a_non_empty_folder_is_not_overwritten_by_accident(tiny_run, exported, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "config.json").write_text("someone else's")
    ckpt = str(tiny_run / trainer.BEST_NAME)
    assert export_hf.main(["--ckpt", ckpt, "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "config.json").read_text() == "someone else's"
    assert export_hf.main(["--ckpt", ckpt, "--out", str(out), "--overwrite"]) == 0
    assert (out / "model.safetensors").read_bytes() == (exported / "model.safetensors").read_bytes()
