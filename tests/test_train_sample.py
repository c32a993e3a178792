import importlib.util
from dataclasses import asdict

import pytest
import torch
from tokenizers import Tokenizer

import cli
import sample_bpe
import train_bpe
import trainer
from checkpoint import load_checkpoint, load_model
from model import GPT, GPTConfig, architecture

from helpers import ROOT, TINY_MODEL_ARGS


def test_training_lowers_the_loss_and_writes_both_checkpoints(tiny_run, capsys):
    assert (tiny_run / "bpe_best.pt").is_file() and (tiny_run / "mini_gpt_last.pt").is_file()
    state = torch.load(tiny_run / "mini_gpt_last.pt", weights_only=True)
    assert state["step"] == 40
    # ln(300) ≈ 5.7 nats at initialisation; 40 steps on 12 KB must do clearly better.
    assert state["best_val_loss"] < 5.0
    assert state["config"] == asdict(GPTConfig(vocab_size=300, block_size=32, n_layer=2, n_head=2, n_embed=32,
                                               dropout=0.0))


def test_checkpoint_is_self_contained_and_plain(tiny_run):
    state = torch.load(tiny_run / "bpe_best.pt", weights_only=True)  # tensors and plain types only
    assert state["format_version"] == 1 and state["tokenizer_path"].endswith("tok.json")
    assert Tokenizer.from_str(state["tokenizer_json"]).get_vocab_size() == 300
    assert {"model", "optimizer", "scaler", "step", "best_val_loss", "args"} <= state.keys()
    assert state["args"]["lr"] == 3e-3 and isinstance(state["args"]["out_dir"], str)


def test_checkpoint_round_trip_gives_identical_logits(tiny_run):
    state = load_checkpoint(tiny_run / "bpe_best.pt")
    model = GPT(GPTConfig(**state["config"])).eval()
    model.load_state_dict(state["model"])
    reloaded, *_ = load_model(tiny_run / "bpe_best.pt", torch.device("cpu"))
    idx = torch.randint(0, 300, (2, 20))
    assert torch.equal(model(idx)[0], reloaded(idx)[0])


def test_sampling_streams_text_after_the_tokenizer_file_is_gone(tiny_run, tmp_path, capsys):
    ckpt = tmp_path / "moved.pt"
    ckpt.write_bytes((tiny_run / "bpe_best.pt").read_bytes())
    (tiny_run / "tok.json").rename(tmp_path / "elsewhere.json")  # as if deleted or overwritten
    try:
        code = sample_bpe.main(["--ckpt", str(ckpt), "--prompt", "ROMEO:", "--max_new_tokens", "30",
                                "--temperature", "0", "--device", "cpu"])
    finally:
        (tmp_path / "elsewhere.json").rename(tiny_run / "tok.json")
    out = capsys.readouterr().out
    assert code == 0 and out.startswith("ROMEO:") and len(out) > len("ROMEO:\n")


def sample_text(ckpt, capsys, *extra):
    assert sample_bpe.main(["--ckpt", str(ckpt), "--max_new_tokens", "25", "--device", "cpu", *extra]) == 0
    return capsys.readouterr().out


def test_greedy_sampling_is_deterministic_and_seeds_reproduce(tiny_run, capsys):
    ckpt = tiny_run / "bpe_best.pt"
    assert sample_text(ckpt, capsys, "--temperature", "0", "--seed", "1") == \
        sample_text(ckpt, capsys, "--temperature", "0", "--seed", "2")
    assert sample_text(ckpt, capsys, "--seed", "5") == sample_text(ckpt, capsys, "--seed", "5")


def test_top_k_above_vocab_and_empty_prompt_work(tiny_run, capsys):
    out = sample_text(tiny_run / "bpe_best.pt", capsys, "--top_k", "100000", "--prompt", "", "--num_samples", "2")
    assert out.count("-" * 40) == 1  # two samples, one separator


def test_amp_dtype_choice():
    assert cli.amp_dtype("cuda", bf16_native=True) == torch.bfloat16
    assert cli.amp_dtype("cuda", bf16_native=False) == torch.float16  # needs the GradScaler
    assert cli.amp_dtype("cpu", bf16_native=True) == torch.bfloat16  # AVX512-BF16 / AMX: on by default
    assert cli.amp_dtype("cpu", bf16_native=True, cpu_bf16=False) is None
    assert cli.amp_dtype("cpu", bf16_native=False) is None  # emulated bf16 is slower than fp32
    assert cli.amp_dtype("mps", bf16_native=True) is None
    assert cli.amp_dtype("cuda", bf16_native=True, enabled=False) is None


def test_weight_decay_only_on_matrices():
    model = GPT(GPTConfig(vocab_size=300, block_size=8, n_layer=1, n_head=2, n_embed=16))
    decay, no_decay = trainer.make_optimizer(model, 1e-3, 0.1, "cpu").param_groups
    assert decay["weight_decay"] == 0.1 and all(p.dim() == 2 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.dim() == 1 for p in no_decay["params"])
    n_params = sum(p.numel() for g in (decay, no_decay) for p in g["params"])
    assert n_params == sum(p.numel() for p in model.parameters())  # tied weight counted once


def test_preset_values_yield_to_explicit_flags():
    args, typed = train_bpe.parse_args(["--preset", "cpu", "--n_layer", "3"])
    assert args.n_layer == 3 and args.n_embed == train_bpe.PRESETS["cpu"]["n_embed"]
    assert typed == {"preset": "cpu", "n_layer": 3}
    assert train_bpe.parse_args([])[0].n_embed == 384  # the GPU defaults without a preset
    # The preset's layout is Qwen3's (it exports as qwen3); --no-qk_norm makes it Llama's (llama).
    assert architecture(vars(train_bpe.parse_args(["--preset", "cpu"])[0])) == "qwen3"
    assert architecture(vars(train_bpe.parse_args(["--preset", "cpu", "--no-qk_norm"])[0])) == "llama"
    # The preset's --min_frequency is byte-level BPE's: SentencePiece trains without it rather than failing.
    def min_frequency(*argv):
        return train_bpe.parse_args(["--preset", "cpu", *argv])[0].min_frequency

    assert min_frequency() == min_frequency("--max_time", "0") == 32
    assert min_frequency("--tokenizer_type", "sentencepiece") == 0
    assert min_frequency("--min_frequency", "0") == 0


def test_a_longer_budget_takes_the_presets_rows_and_typed_flags_still_win():
    def budget_values(*argv):
        args = train_bpe.parse_args(list(argv))[0]
        return args.dropout, args.weight_decay, args.dropout_after, args.dropout_below, args.n_embed

    assert budget_values("--preset", "cpu") == (0.0, 0.8, 0.0, 0.0, 128)  # its own 134 s: no row
    assert budget_values("--preset", "cpu", "--max_time", "299") == (0.0, 0.8, 0.0, 0.0, 128)
    assert budget_values("--preset", "cpu", "--max_time", "5:00") == (0.2, 0.8, 7.0, 0.4, 128)
    assert budget_values("--preset", "cpu", "--max_time", "10:00") == (0.2, 0.8, 7.0, 0.4, 192)
    assert budget_values("--preset", "cpu", "--max_time", "30:00") == (0.3, 0.8, 7.0, 0.4, 192)
    assert budget_values("--preset", "cpu", "--max_time", "0") == (0.3, 0.8, 7.0, 0.4, 192)  # no limit: every row
    assert budget_values("--preset", "cpu", "--max_time", "1:00:00", "--n_embed", "128") == (0.3, 0.8, 7.0, 0.4, 128)
    assert budget_values("--preset", "cpu", "--weight_decay", "0.1") == (0.0, 0.1, 0.0, 0.0, 128)
    assert budget_values("--max_time", "600") == (0.1, 0.1, 0.0, 0.0, 384)  # no preset, no rows
    # Two heads of 64 and AdamW's rate 3e-3 up to 300 s; the 4 x 192 model takes three heads of 64 and 2e-3.
    def heads_and_rate(*argv):
        args = train_bpe.parse_args(list(argv))[0]
        return args.n_head, args.lr

    assert heads_and_rate("--preset", "cpu", "--max_time", "5:00") == (2, 3e-3)
    assert heads_and_rate("--preset", "cpu", "--max_time", "10:00") == (3, 2e-3)
    assert heads_and_rate("--preset", "cpu", "--max_time", "10:00", "--n_head", "2") == (2, 2e-3)
    # A width you type keeps heads of 64 where 64 divides it; otherwise the preset's count stands
    assert heads_and_rate("--preset", "cpu", "--max_time", "10:00", "--n_embed", "128") == (2, 2e-3)
    assert heads_and_rate("--preset", "cpu", "--n_embed", "256") == (4, 3e-3)
    assert heads_and_rate("--preset", "cpu", "--n_embed", "160") == (2, 3e-3)
    # A dropout the user types is used on any corpus, unless they also type where it stops.
    assert budget_values("--preset", "cpu", "--max_time", "600", "--dropout", "0.1") == (0.1, 0.8, 7.0, 0.0, 192)
    assert budget_values("--preset", "cpu", "--max_time", "600", "--attn_dropout", "0.1")[3] == 0.0
    assert budget_values("--preset", "cpu", "--max_time", "600", "--attn_dropout", "0")[3] == 0.4  # none typed
    assert budget_values("--preset", "cpu", "--max_time", "600", "--dropout", "0.1",
                         "--dropout_below", "2") == (0.1, 0.8, 7.0, 2.0, 192)


def test_a_fixed_step_benchmark_trains_with_the_values_of_the_budget_it_stands_for():
    """bench/quality.py --steps N has no time limit, which alone would take every row of the preset; with
    --as_budget T it trains with exactly the values --preset cpu --max_time T gives, typed flags still winning."""
    spec = importlib.util.spec_from_file_location("quality", ROOT / "bench" / "quality.py")
    quality = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quality)

    def settings(*argv):
        values = vars(train_bpe.parse_args(["--preset", "cpu", *argv])[0])
        return {k: v for k, v in values.items() if k not in ("max_time", "warmup_steps")}

    rows = [seconds for seconds, _ in train_bpe.PRESET_BUDGETS["cpu"]]
    assert settings("--max_time", "0") != settings()  # no limit is not the preset's own 134 s ...
    for budget in [train_bpe.PRESETS["cpu"]["max_time"], *rows, rows[-1] * 10]:
        for typed in ([], ["--dropout", "0.05"]):
            flags = quality.budget_flags(budget, typed)
            assert settings("--max_time", "0", *flags, *typed) == settings("--max_time", str(budget), *typed)
    # ... and the longest row's values are what no limit takes
    assert settings("--max_time", "0", *quality.budget_flags(rows[-1], [])) == settings("--max_time", "0")


def test_a_short_run_fits_the_default_warmup_and_a_typed_one_is_kept(capsys):
    def warmup(*argv):
        return train_bpe.parse_args(list(argv))[0].warmup_steps

    assert warmup("--max_steps", "60") == 6  # the default 200 would be refused: longer than the run
    assert warmup("--max_steps", "300") == 30
    assert warmup() == 200  # --max_steps 5000: the default as it is
    assert warmup("--preset", "cpu", "--max_steps", "50") == 5
    assert warmup("--max_steps", "60", "--warmup_steps", "40") == 40
    with pytest.raises(SystemExit) as exc:
        warmup("--max_steps", "60", "--warmup_steps", "70")
    assert exc.value.code == 2 and "--warmup_steps 70 must be between 0 and --max_steps 60" in capsys.readouterr().err


def test_run_log_shows_config_device_params_and_effective_batch(tiny_file, tmp_path, capsys):
    code = train_bpe.main(["--data_file", str(tiny_file), "--tokenizer_path", str(tmp_path / "t.json"),
                           "--out_dir", str(tmp_path), *TINY_MODEL_ARGS, "--grad_accum_steps", "3",
                           "--max_steps", "2", "--eval_interval", "2", "--eval_iters", "1", "--warmup_steps", "1"])
    out = capsys.readouterr().out
    assert code == 0
    assert "device: cpu" in out and "parameters:" in out
    assert "effective batch: 8 x 3 = 24 sequences" in out
    assert "val bits/byte" in out


def test_a_corpus_without_enough_pairs_gets_a_smaller_vocabulary_and_says_so(tiny_file, tmp_path, capsys):
    code = train_bpe.main(["--data_file", str(tiny_file), "--tokenizer_path", str(tmp_path / "t.json"),
                           "--out_dir", str(tmp_path), *TINY_MODEL_ARGS, "--min_frequency", "40", "--max_steps", "2",
                           "--eval_interval", "2", "--eval_iters", "1", "--warmup_steps", "0"])
    out = capsys.readouterr().out
    vocab = torch.load(tmp_path / "bpe_best.pt", weights_only=True)["config"]["vocab_size"]
    assert code == 0 and 256 < vocab < 300
    assert f"the tokenizer stopped at {vocab} of --vocab_size 300 tokens" in out and "--min_frequency 40" in out


def test_reusing_a_tokenizer_skips_training(tiny_file, tiny_run, tmp_path):
    code = train_bpe.main(["--data_file", str(tiny_file), "--tokenizer", str(tiny_run / "tok.json"),
                           "--out_dir", str(tmp_path), *TINY_MODEL_ARGS, "--max_steps", "2",
                           "--eval_interval", "2", "--eval_iters", "1", "--warmup_steps", "0"])
    state = torch.load(tmp_path / "bpe_best.pt", weights_only=True)
    assert code == 0 and state["tokenizer_json"] == (tiny_run / "tok.json").read_text()

