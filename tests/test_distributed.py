"""Training under torchrun with DDP: 2 CPU processes on gloo, the same code path as N GPUs on NCCL."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import cli
import data
import distributed
import sample_bpe
import train_bpe
from checkpoint import load_checkpoint
from model import GPT, GPTConfig
from trainer import BEST_NAME, LAST_NAME

from helpers import ROOT, TINY_MODEL_ARGS

# Micro-batches of 4 sequences, 2 of them per step, on 2 ranks: 16 sequences per optimizer step. A constant
# learning rate, so that a run stopped early and resumed with a larger --max_steps follows the same schedule;
# no clipping, so that the optimizer's first moment shows the gradient's scale too. (fp32 comes from
# TINY_MODEL_ARGS' --no-amp: bf16 autocast's rounding would swamp the comparison of the two runs.)
DDP_ARGS = [*TINY_MODEL_ARGS, "--batch_size", "4", "--grad_accum_steps", "2", "--warmup_steps", "0",
            "--grad_clip", "0", "--lr", "3e-3"]


def torchrun_cmd(*args, nproc=2) -> list[str]:
    """train_bpe.py under torchrun on this machine (a rendezvous on a free local port)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            str(ROOT / "train_bpe.py"), *map(str, args)]


def torchrun(*args) -> subprocess.CompletedProcess:
    return subprocess.run(torchrun_cmd(*args), cwd=ROOT, capture_output=True, text=True, timeout=120)


def weight_digests(stdout: str) -> tuple[str, str]:
    return re.search(r"weights sha256 by rank: 0=(\w+) 1=(\w+) ", stdout).groups()


@pytest.fixture(scope="module")
def ddp_run(tiny_file, tmp_path_factory):
    """One 30-step torchrun job whose output and files several tests below inspect."""
    out = tmp_path_factory.mktemp("ddp")
    proc = torchrun("--data_file", tiny_file, "--tokenizer_path", out / "tok.json", "--out_dir", out, *DDP_ARGS,
                    "--max_steps", "30", "--eval_interval", "10", "--eval_iters", "4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout


@pytest.fixture(scope="module")
def one_step_run(tiny_file, tmp_path_factory):
    """The same job stopped after its first optimizer step."""
    out = tmp_path_factory.mktemp("ddp1")
    proc = torchrun("--data_file", tiny_file, "--tokenizer_path", out / "tok.json", "--out_dir", out, *DDP_ARGS,
                    "--max_steps", "1", "--eval_iters", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.slow
def test_ddp_run_reports_once_with_the_global_batch(ddp_run):
    _, stdout = ddp_run
    assert "effective batch: 4 x 2 x 2 processes = 16 sequences (512 tokens) per step" in stdout
    # rank 1 is silent: every summary line appears once, not once per rank
    for line in ("corpus: 1 file(s)", "step 10:", "step 30:", "done in"):
        assert stdout.count(line) == 1, line


@pytest.mark.slow
def test_ranks_end_with_the_weights_of_the_checkpoint(ddp_run):
    out, stdout = ddp_run
    saved = distributed.state_digest(load_checkpoint(out / LAST_NAME)["model"])
    assert weight_digests(stdout) == (saved, saved)


@pytest.mark.slow
def test_ddp_writes_one_checkpoint_set_without_module_prefix(ddp_run):
    out, _ = ddp_run
    names = {p.name for p in out.iterdir()} - {"loss.png"}  # the plot needs the optional matplotlib
    assert names == {BEST_NAME, LAST_NAME, "tok.json", "token_cache", "metrics.jsonl"}  # no temp or per-rank file
    assert sorted(p.name for p in (out / "token_cache").iterdir()) == ["tokens.bin", "tokens.json"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in records].count("start") == 1  # rank 0 alone writes metrics
    assert [r["step"] for r in records if r["kind"] == "eval"] == [10, 20, 30]
    state = load_checkpoint(out / LAST_NAME)
    assert state["step"] == 30 and state["world_size"] == 2 and len(state["rng_ranks"]) == 2
    GPT(GPTConfig(**state["config"])).load_state_dict(state["model"])  # strict: no "module." keys


@pytest.mark.slow
def test_ddp_loss_decreases(ddp_run):
    _, stdout = ddp_run
    val = [float(v) for v in re.findall(r"step \d+: .*val loss (\d+\.\d+)", stdout)]
    assert len(val) == 3 and val[-1] < val[0] - 0.3


@pytest.mark.slow
def test_ddp_checkpoint_samples_in_one_process(ddp_run, capsys):
    out, _ = ddp_run
    code = sample_bpe.main(["--ckpt", str(out / BEST_NAME), "--prompt", "ROMEO:", "--max_new_tokens", "30",
                            "--temperature", "0", "--device", "cpu"])
    assert code == 0
    assert len(capsys.readouterr().out) > len("ROMEO:") + 10


@pytest.mark.slow
def test_first_step_equals_one_process_with_the_same_sequences(one_step_run, tiny_file, tmp_path, monkeypatch):
    """One DDP step (2 ranks x 2 micro-batches of 4) against one single-process step (2 micro-batches of 8).

    Each single-process micro-batch is rank 0's micro-batch followed by rank 1's, drawn from the ranks' own
    seeds, so both runs average the gradient over the same 16 sequences. What DDP guarantees is that
    averaged gradient; we read it from AdamW's first moment after one step (exactly 0.1 x the gradient).
    Only the summation order differs (the matmuls over 4 rows vs 8, then the all-reduce): float32 rounding
    of a sum of n terms is bounded by about n * eps * sum(|terms|), and typically sqrt(n) * eps times it,
    so each element may differ by a few eps * sqrt(n) * max|g| with n = 512 tokens. A wrong gradient (not
    averaged, or from other sequences) is off by the order of |g| itself.

    The weights are not compared: Adam's first update is lr * g / (|g| + eps), so for a gradient element
    that is nearly zero a rounding difference turns into a weight difference of up to 2 * lr.
    """
    seed = 42  # train_bpe's default --seed
    rank_gens = [torch.Generator().manual_seed(distributed.World(rank=r, size=2).rank_seed(seed)) for r in (0, 1)]
    get_batch = data.TokenData.get_batch

    def both_ranks_batch(self, split, batch_size, generator=None):
        if split != "train":
            return get_batch(self, split, batch_size, generator)
        halves = [get_batch(self, split, batch_size // 2, g) for g in rank_gens]
        return tuple(torch.cat(parts) for parts in zip(*halves))

    monkeypatch.setattr(data.TokenData, "get_batch", both_ranks_batch)
    code = train_bpe.main(["--data_file", str(tiny_file), "--tokenizer", str(one_step_run / "tok.json"),
                           "--out_dir", str(tmp_path), *DDP_ARGS, "--batch_size", "8", "--max_steps", "1",
                           "--eval_iters", "1"])
    assert code == 0

    ddp, one = load_checkpoint(one_step_run / LAST_NAME), load_checkpoint(tmp_path / LAST_NAME)
    tokens = 16 * 32
    tolerance = 8 * torch.finfo(torch.float32).eps * tokens**0.5  # times max|g| of each tensor
    for i, s in one["optimizer"]["state"].items():
        g_one, g_ddp = s["exp_avg"], ddp["optimizer"]["state"][i]["exp_avg"]
        scale = g_one.abs().max().item()
        torch.testing.assert_close(g_ddp, g_one, rtol=0, atol=tolerance * scale, msg=f"parameter {i}")
        assert scale > 0
    # Both took a real step from the same initial weights.
    torch.manual_seed(seed)
    init = GPT(GPTConfig(**one["config"])).state_dict()
    for state in (one, ddp):
        assert max((w - init[name]).abs().max().item() for name, w in state["model"].items()) > 1e-4


@pytest.mark.slow
def test_resume_under_ddp_continues_exactly(one_step_run, ddp_run):
    """Step 1's checkpoint resumed to step 30 ends with bitwise the weights of the uninterrupted 30 steps."""
    proc = torchrun("--resume", one_step_run / LAST_NAME, "--max_steps", "30", "--eval_interval", "10")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from" in proc.stdout and "note:" not in proc.stdout
    assert weight_digests(proc.stdout) == weight_digests(ddp_run[1])


@pytest.mark.slow
def test_time_budget_gives_every_rank_the_same_clock(tiny_file, tmp_path):
    """--max_time drives the cosine and the stop from the clock; the ranks agree on it, so they end together
    with identical weights (with one clock each, their learning rates would differ)."""
    proc = torchrun("--data_file", tiny_file, "--tokenizer_path", tmp_path / "tok.json", "--out_dir", tmp_path,
                    *DDP_ARGS, "--use_cosine", "--max_steps", "100000", "--max_time", "2", "--eval_interval", "100000",
                    "--eval_iters", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "time budget of 2s spent" in proc.stdout
    first, second = weight_digests(proc.stdout)
    assert first == second


def rank_pid(parent: int, rank: int) -> int:
    """The pid of the worker torchrun (pid parent) started with RANK=rank."""
    for proc in Path("/proc").iterdir():
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and f"RANK={rank}".encode() in environ:
            return int(proc.name)
    raise AssertionError(f"no worker with RANK={rank}")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's process through /proc")
def test_sigterm_on_one_rank_saves_once_and_stops_every_rank(tiny_file, tmp_path):
    out = tmp_path / "run"
    cmd = torchrun_cmd("--data_file", tiny_file, "--tokenizer_path", out / "tok.json", "--out_dir", out, *DDP_ARGS,
                       "--max_steps", "100000", "--eval_interval", "100000")  # no periodic saves
    with subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}) as proc:
        for line in proc.stdout:
            if line.startswith("device:"):  # printed after DDP has synchronised the ranks, just before training
                break
        time.sleep(0.5)
        os.kill(rank_pid(proc.pid, 1), signal.SIGTERM)  # as a scheduler preempting one process
        stdout, stderr = proc.communicate(timeout=60)
    stopped = re.findall(r"stopped by SIGTERM at step (\d+); continue with: torchrun .* --resume ", stdout)
    assert len(stopped) == 1, stderr[-3000:]
    # Both ranks ended by SIGTERM, none hung or crashed: 143 is our exit code; -15 is a rank that torchrun
    # signalled itself once the other had exited, while it was already leaving after the save.
    assert len(re.findall(r"exitcode  : (?:143|-15) ", stderr)) == 2, stderr[-3000:]
    names = {p.name for p in out.iterdir()} - {"loss.png", "metrics.jsonl"}
    assert names == {LAST_NAME, "tok.json", "token_cache"}  # one checkpoint, no temporary file
    state = load_checkpoint(out / LAST_NAME)
    assert state["step"] == int(stopped[0]) > 0

    # the DDP checkpoint resumes in a single process too
    code = train_bpe.main(["--resume", str(out / LAST_NAME), "--max_steps", str(state["step"] + 2)])
    assert code == 0 and load_checkpoint(out / LAST_NAME)["step"] == state["step"] + 2


@pytest.mark.slow
def test_rank0_failure_stops_every_rank_with_one_message(tmp_path):
    proc = torchrun("--data_file", tmp_path / "missing.txt", "--out_dir", tmp_path, *DDP_ARGS)
    assert proc.returncode != 0
    assert proc.stderr.count("train_bpe.py: error: --data_file") == 1
    assert "[rank1]" not in proc.stderr  # the waiting rank leaves without a traceback of its own


def test_single_process_creates_no_process_group():
    world = distributed.setup("cpu", cli.resolve_device, environ={})
    assert not world.enabled and world.size == 1 and world.is_main
    assert world.rank_seed(42) == 42  # one process draws exactly the batches it drew before DDP existed
    assert world.mean(2.5) == 2.5 and world.gather("x") == ["x"] and world.agreed_signal(None) is None


@pytest.mark.parametrize("device", ["cuda:1", "mps"])
def test_torchrun_device_that_is_not_one_per_rank_is_a_clear_error(device):
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}
    with pytest.raises(distributed.DistributedError, match="pass --device cuda"):
        distributed.setup(device, cli.resolve_device, environ=env)


def test_each_local_rank_takes_its_own_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert distributed._rank_device("auto", 1) == torch.device("cuda", 1)
    assert distributed._rank_device("cuda", 0) == torch.device("cuda", 0)
    assert distributed._rank_device("cpu", 1) == torch.device("cpu")
    with pytest.raises(distributed.DistributedError, match="--nproc_per_node 2 or fewer"):
        distributed._rank_device("cuda", 2)
