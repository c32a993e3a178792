"""The training loop: one optimizer step at a time, evaluated, saved and stoppable, in one process or under DDP.

    run, state = setup(args, world, run_data, resume)
    return fit(run, state, stop)

``Run`` holds what stays fixed for a run (flags, data, the model as the loop calls it, precision, the
metrics log); ``TrainState`` holds what moves from step to step (weights, optimizer, scaler, batch
sampler, step, best validation loss, skipped steps, training time), and ``checkpoint_state`` builds a
checkpoint from the two. ``fit`` reads top to bottom: learning rate, one optimizer step, log,
evaluate and save, stop on a signal.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import shlex
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

import data
import distributed
import lm_loss
import metrics
import muon
import pretrained
import resume as resume_
import tokenizer
from checkpoint import rng_state, save_checkpoint
from cli import amp_dtype, bf16_supported
from evaluate import estimate_loss
from files import OutputError, check_file_target, check_free_space, check_writable, remove_stale_temps
from model import GPT, LAYOUT_FIELDS, GPTConfig
from prepare import RunData
from progress import draw_plot, epoch, note_memorising, note_small_corpus, progress_bar, progress_fields, report
from schedule import budget_spent, lr_factor
from stopping import GracefulStop, SkippedSteps, TrainingDiverged, finite_weights

BEST_NAME, LAST_NAME = "bpe_best.pt", "mini_gpt_last.pt"
clock = time.perf_counter  # the training loop's clock; tests replace it to fake the passing of time


@dataclass
class Run:
    """What stays fixed while a run trains."""

    args: argparse.Namespace
    world: distributed.World
    data: RunData
    model: torch.nn.Module  # what the loop calls: the raw model, compiled and/or wrapped in DDP
    dtype: torch.dtype | None  # autocast dtype, None for fp32
    log: metrics.MetricsLog
    start_step: int = 0  # where this process started (0, or the step a resume continues from)
    init_from: dict | None = None  # the model this run started from (--init_from), for checkpoints and metrics
    teacher: GPT | None = None  # the model it learns the distributions of (--distill_from), frozen

    @property
    def tokens_per_step(self) -> int:
        return self.args.batch_size * self.args.grad_accum_steps * self.world.size * self.args.block_size

    @property
    def last_path(self) -> Path:
        return self.args.out_dir / LAST_NAME

    @property
    def best_path(self) -> Path:
        return self.args.out_dir / BEST_NAME

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.world.device.type, dtype=self.dtype)


@dataclass
class TrainState:
    """What changes from step to step, and what a checkpoint saves."""

    raw_model: GPT  # the uncompiled, unwrapped module: its state_dict has plain names
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    generator: torch.Generator  # the batch sampler's random stream
    skipped: SkippedSteps
    step: int = 0  # optimizer steps done
    best_val: float = math.inf
    time_before: float = 0.0  # seconds trained by earlier runs of this checkpoint (they count for --max_time)
    started: float = field(default_factory=lambda: clock())  # the clock when this process's loop began
    saved_step: int | None = None  # the step mini_gpt_last.pt holds, when this process knows it
    healthy: bool = True  # whether the latest evaluation found finite weights and a finite validation loss
    best_step: int | None = None  # the step bpe_best.pt holds
    evals_since_best: int = 0  # evaluations since the last new best validation loss (for --early_stop)
    recent: list = field(default_factory=list)  # (train loss, val loss) of the latest evaluations
    noted_memorising: bool = False  # the memorising note is said once per run
    dropout_on: bool = True  # whether raw_model trains with its dropout now (--dropout_after)
    early_stopped: bool = False

    def elapsed(self) -> float:
        """Seconds trained, earlier runs of this checkpoint included."""
        return self.time_before + self.run_seconds()

    def run_seconds(self) -> float:
        """Seconds this process has trained."""
        return clock() - self.started


# --------------------------------------------------------------------------- set up


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, device_type: str,
                   name: str = "adamw", muon_lr: float = 0.02):
    """AdamW with weight decay on matrices (weights, embeddings) only, not on biases or LayerNorm gains.

    name="muon": the Transformer blocks' weight matrices take Muon steps at muon_lr instead (muon.py).
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if name == "muon":
        hidden = muon.hidden_matrices(model)
        groups = [
            {"params": [p for n, p in named if n in hidden], "weight_decay": weight_decay, "muon": True,
             "lr_scale": muon_lr / lr},
            {"params": [p for n, p in named if n not in hidden and p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for n, p in named if p.dim() < 2], "weight_decay": 0.0},
        ]
        return muon.MuonAdamW(groups, lr=lr)
    groups = [
        {"params": [p for _, p in named if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for _, p in named if p.dim() < 2], "weight_decay": 0.0},
    ]
    # betas (0.9, 0.95) as GPT-3 and nanoGPT train; fused kernels only exist for CUDA tensors.
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=device_type == "cuda")


def checkpoint_bytes(args) -> int:
    """About how big one checkpoint of this run will be: fp32 weights, AdamW's two moments, the tokenizer.

    Counted from the GPT-2 layout (tied embeddings; per block 12·C² weights and 13·C biases and gains)
    rather than by building the model, which is slow for a large one.
    """
    C = args.n_embed
    params = (args.vocab_size + args.block_size) * C + args.n_layer * (12 * C * C + 13 * C) + 2 * C
    return 3 * 4 * params + 100 * args.vocab_size


def check_outputs(args, trains_tokenizer: bool) -> None:
    """Fails now, not after an hour of training, when an output cannot be written (rank 0 only)."""
    check_writable(args.out_dir, "--out_dir")
    for name in (BEST_NAME, LAST_NAME, metrics.METRICS_NAME, metrics.PLOT_NAME):
        check_file_target(args.out_dir / name, "--out_dir")
    # Room for best + last + the temporary file of a save.
    check_free_space(args.out_dir, 3 * checkpoint_bytes(args), "--out_dir", names=(BEST_NAME, LAST_NAME))
    if args.distill_from:  # a teacher this run's saves replace: resumed, the run would learn from itself
        teacher = Path(args.distill_from).expanduser().resolve()
        if teacher in {(args.out_dir / name).resolve() for name in (BEST_NAME, LAST_NAME)}:
            raise OutputError(f"--distill_from {args.distill_from} is where this run saves its checkpoints: it "
                              f"would be overwritten; copy the teacher elsewhere, or pass another --out_dir")
    if trains_tokenizer:
        check_file_target(args.tokenizer_path, "--tokenizer_path")
    if args.cache_dir is not None:
        check_writable(args.cache_dir, "--cache_dir")
    elif (args.out_dir / "token_cache").exists() and not (args.out_dir / "token_cache").is_dir():
        raise OutputError(f"--out_dir {args.out_dir} holds a file named token_cache where the token cache goes: "
                          f"move it away, or keep the cache elsewhere with --cache_dir")
    for stale in remove_stale_temps(args.out_dir, (BEST_NAME, LAST_NAME)):
        print(f"removed {stale}, left by a run that was killed while saving")


def setup(args, world: distributed.World, run_data: RunData, resume: resume_.Resume | None = None,
          source: pretrained.Source | None = None,
          teacher: pretrained.Source | None = None) -> tuple[Run, TrainState]:
    """Builds the model, optimizer and state for step 0 (from random weights or a source model's), or restores
    them from a checkpoint to resume; and the teacher's model, to distil."""
    torch.manual_seed(args.seed)  # the same initial weights on every rank (DDP also copies rank 0's)
    device = world.device
    raw_model = GPT(model_config(args, run_data, source))
    if source is not None:
        raw_model.load_state_dict(pretrained.initial_weights(source, args.block_size))
    raw_model = raw_model.to(device)
    model = torch.compile(raw_model) if args.compile else raw_model  # checkpoints save raw_model
    model = world.wrap(model)  # DDP under torchrun (averages gradients across ranks); unchanged otherwise
    if world.rank:  # other dropout masks on every rank; rank 0 keeps the stream of a single process
        torch.manual_seed(world.rank_seed(args.seed))
    dtype = amp_dtype(device.type, bf16_supported(device), args.amp, args.cpu_bf16)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls: ~free speed on Ampere and later
        torch.backends.cudnn.allow_tf32 = True
    state = TrainState(
        raw_model=raw_model,
        optimizer=make_optimizer(raw_model, args.lr, args.weight_decay, device.type, args.optimizer, args.muon_lr),
        scaler=torch.amp.GradScaler(device.type, enabled=dtype == torch.float16),
        generator=torch.Generator().manual_seed(world.rank_seed(args.seed)),  # each rank draws other batches
        skipped=SkippedSteps(args.max_bad_steps),
    )
    if resume is not None:
        restore(state, resume, world)
    else:  # advice for choosing a model; a resumed run has chosen
        note_small_corpus(raw_model, run_data, BEST_NAME, small_below=args.dropout_below or 1.0)
    log = metrics.MetricsLog(args.out_dir / metrics.METRICS_NAME if world.is_main else None)  # one writer
    init_from = source.record() if source else (resume.state.get("init_from") if resume else None)
    run = Run(args, world, run_data, model, dtype, log, start_step=state.step, init_from=init_from,
              teacher=frozen(teacher, device))
    ranks = f" x {world.size} processes" if world.enabled else ""
    sequences = args.batch_size * args.grad_accum_steps * world.size
    print(f"device: {device}, precision: {dtype or torch.float32}, parameters: {raw_model.num_params() / 1e6:.2f}M, "
          f"effective batch: {args.batch_size} x {args.grad_accum_steps}{ranks} = {sequences} "
          f"sequences ({run.tokens_per_step:,} tokens) per step")
    log.write("start", step=state.step, tokens_per_step=run.tokens_per_step, config=plain_flags(args),
              **({"init_from": init_from} if init_from else {}))
    return run, state


def frozen(teacher: pretrained.Source | None, device: torch.device) -> GPT | None:
    """The teacher's model (--distill_from) on the device, in eval mode, without gradients; None without one."""
    if teacher is None:
        return None
    with torch.random.fork_rng(devices=[]):  # its random initialisation, overwritten at once, must not move the
        model = GPT(teacher.config)  # run's random stream: a resumed run has restored it already
    model.load_state_dict(teacher.weights)
    return model.requires_grad_(False).to(device).eval()


def model_config(args, run_data: RunData, source: pretrained.Source | None) -> GPTConfig:
    """The model a new run builds: the flags' shape, or the source's (--init_from) with this run's context and
    dropout."""
    if source is not None:
        return pretrained.config_for(source, args)
    return GPTConfig(**layout(args), vocab_size=run_data.tok.get_vocab_size(), block_size=args.block_size,
                     n_layer=args.n_layer, n_head=args.n_head, n_embed=args.n_embed, dropout=args.dropout,
                     attn_dropout=args.attn_dropout)


def fit_dropout_to_corpus(args, run_data: RunData, source: pretrained.Source | None) -> None:
    """--dropout_below R: a new run with at least R training tokens per parameter trains without dropout, and
    says so. Dropout pays where a model can memorise its corpus and only slows it down elsewhere: at 30
    minutes the preset's 4 x 192 model scored 1.412 bits/byte on the Python corpus (0.63 tokens per
    parameter) without dropout and 1.486 with 0.2 from pass 7, while without it the 4 x 128 model memorises
    tiny Shakespeare (0.24) after about 7 passes (bench/RESULTS.md, "Quality per second VI" and "X")."""
    if not args.dropout_below or not (args.dropout or args.attn_dropout):
        return
    with torch.device("meta"):  # the parameter count alone: no memory, no initialisation
        params = GPT(model_config(args, run_data, source)).num_params(non_embedding=False)
    tokens = len(run_data.token_data.train)
    if tokens < args.dropout_below * params:
        return
    print(f"note: no dropout in this run: {tokens:,} training tokens for {params / 1e6:.2f}M parameters "
          f"({tokens / params:.2f} per parameter, at least --dropout_below {args.dropout_below:g}) is too much "
          f"text for this model to memorise, so dropout would only slow it down (--dropout_below 0 keeps it)")
    args.dropout = 0.0
    if args.attn_dropout is not None:  # None stays "the same as --dropout"
        args.attn_dropout = 0.0


def layout(args) -> dict:
    """The GPTConfig layout fields (positions, norms, MLP, ...) from flags of the same names."""
    return {name: getattr(args, name) for name in LAYOUT_FIELDS}


def restore(state: TrainState, resume: resume_.Resume, world: distributed.World) -> None:
    """Puts a checkpoint's weights, optimizer, scaler, random streams and counters into state."""
    saved = resume.state
    rng, note = world.rng_for_resume(saved, fresh=rng_state(state.generator))
    if note:
        print(f"note: {note}")
    resume_.restore_training_state({**saved, "rng": rng}, resume.path, state.raw_model, state.optimizer,
                                   state.scaler, state.generator)
    state.step = state.saved_step = int(saved["step"])
    state.best_val = float(saved["best_val_loss"])
    state.best_step = saved.get("best_step")  # checkpoints from before it was saved: unknown
    state.evals_since_best = int(saved.get("evals_since_best", 0))
    state.skipped.total = int(saved.get("skipped_steps", 0))
    state.time_before = float(saved.get("train_time", 0.0))


def plain_flags(args) -> dict:
    """The resolved flags as plain values (paths as strings), for the log and the checkpoint."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}


# --------------------------------------------------------------------------- the loop


def fit(run: Run, state: TrainState, stop: GracefulStop) -> int:
    """Trains from state.step to --max_steps or the end of --max_time; returns the exit code."""
    args = run.args
    state.started = clock()
    with progress_bar(run, state) as bar:
        stop.arm()  # from here a first Ctrl-C lets the step finish and saves
        while state.step < args.max_steps:
            lr = set_learning_rate(run, state)
            schedule_dropout(run, state)
            loss = train_step(run, state)
            state.step += 1
            finished = budget_spent(state.step, args.max_steps, run.world.max(state.elapsed()), args.max_time)
            report(run, state, bar, loss, lr)
            if state.step % args.eval_interval == 0 or finished:
                evaluate_and_save(run, state)
                finished = finished or stop_early(run, state)
            signum = run.world.agreed_signal(stop.signum)  # under torchrun every rank stops after the same step
            if signum and not finished:
                return stopped(run, state, bar, signum)
            if finished:
                break
    return finish(run, state)


def set_learning_rate(run: Run, state: TrainState) -> float:
    """The scheduled learning rate for this step, set on every parameter group."""
    args = run.args
    # Under torchrun every rank uses the same (slowest) clock, or their learning rates and stops would differ.
    factor = lr_factor(state.step, args.warmup_steps, args.max_steps, args.min_lr_factor,
                       run.world.max(state.elapsed()), args.max_time, args.lr_schedule, args.warmdown_fraction)
    lr = args.lr * (factor if args.use_cosine else 1.0)
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    return lr


def schedule_dropout(run: Run, state: TrainState) -> None:
    """--dropout_after P: no dropout for the first P passes over the training tokens, then the model's own.
    A model memorises a corpus only after several passes, and dropout before that only slows its learning
    (bench/RESULTS.md, "Quality per second VI"). The passes follow from the step, so a resumed run agrees."""
    on = epoch(run, state) >= run.args.dropout_after
    if on == state.dropout_on:
        return
    state.raw_model.set_dropout(on)
    state.dropout_on = on
    config = state.raw_model.config
    if on and state.step > 0 and run.world.is_main and (config.dropout or config.attention_dropout):
        tqdm.write(f"pass {epoch(run, state):.2f} at step {state.step}: dropout on from here "
                   f"(--dropout_after {run.args.dropout_after:g})")


def train_step(run: Run, state: TrainState) -> float:
    """One optimizer step over grad_accum_steps micro-batches; returns the mean loss of its batches.

    A non-finite loss or gradient skips the step; too many in a row raise TrainingDiverged.
    """
    args, world, device = run.args, run.world, run.world.device
    loss_sum = torch.zeros((), device=device)
    for micro_step in range(args.grad_accum_steps):
        x, y = train_batch(run, state, micro_step)
        if device.type == "cuda":
            x, y = x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        else:
            x, y = x.to(device), y.to(device)
        with world.grad_sync(run.model, sync=micro_step == args.grad_accum_steps - 1):
            with run.autocast():
                _, loss = run.model(x, y, teacher=taught(run, state, x))
            loss_sum += loss.detach()
            # mean over the micro-steps here; DDP's all-reduce then averages over the ranks
            state.scaler.scale(loss / args.grad_accum_steps).backward()
    state.scaler.unscale_(state.optimizer)  # a no-op without fp16 scaling
    grad_norm = torch.nn.utils.clip_grad_norm_(state.raw_model.parameters(), args.grad_clip or math.inf)
    # A NaN/inf loss or gradient would poison the weights and Adam's moments: skip the step instead.
    loss_ok, grads_ok = torch.stack([loss_sum, grad_norm]).isfinite().tolist()  # one device sync
    loss_ok = world.all(loss_ok)  # gradients are averaged, losses are not: every rank skips together
    if state.skipped.record(loss_ok, grads_ok, state.scaler.is_enabled()):
        state.scaler.step(state.optimizer)
    state.scaler.update()
    state.optimizer.zero_grad(set_to_none=True)
    if state.skipped.diverged:
        raise TrainingDiverged(
            f"training diverged: {state.skipped.in_a_row} steps in a row up to step {state.step + 1} had a "
            f"non-finite loss or gradient (--max_bad_steps {args.max_bad_steps}); {kept_checkpoint(run, state)}"
        )
    return loss_sum.item() / args.grad_accum_steps


def taught(run: Run, state: TrainState, x: torch.Tensor) -> lm_loss.Teacher | None:
    """What the loss needs of the teacher (--distill_from) for the batch x: its final hidden states, and its
    output layer cut to the student's vocabulary (a Hugging Face model may have more rows than its tokenizer has
    tokens); None without a teacher."""
    if run.teacher is None:
        return None
    with torch.no_grad():
        hidden = run.teacher.hidden(x)  # (B, T, C')
    head = run.teacher.lm_head.weight[: state.raw_model.config.vocab_size]
    return lm_loss.Teacher(hidden.flatten(0, 1), head, run.teacher.config.logit_softcap, run.args.distill_weight)


def train_batch(run: Run, state: TrainState, micro_step: int):
    """This micro-step's (x, y) training batch, in the order --batch_order asks for."""
    args, world = run.args, run.world
    if args.batch_order == "epochs":
        # The draw's number fixes its windows (no sampler state), so a resumed run continues exactly.
        draw = (state.step * args.grad_accum_steps + micro_step) * world.size + world.rank
        return run.data.token_data.epoch_batch(draw, args.batch_size, args.seed)
    return run.data.token_data.get_batch("train", args.batch_size, state.generator)


def evaluate_and_save(run: Run, state: TrainState) -> None:
    """Estimates train and val loss, then writes mini_gpt_last.pt (and bpe_best.pt on a new best).

    A model whose weights or validation loss are not finite is never saved: the checkpoints on disk
    stay the last good ones.
    """
    args, world = run.args, run.world
    losses = estimate_loss(run.model, run.data.token_data, args.batch_size, args.eval_iters, world.device,
                           run.autocast, world.rank_seed(args.seed + 1))
    losses = {split: world.mean(loss) for split, loss in losses.items()}  # every rank agrees on "best"
    val = losses["val"]
    token_data = run.data.token_data
    bpb = data.bits_per_byte(val, len(token_data.val), token_data.val_bytes)
    healthy = state.healthy = math.isfinite(val) and finite_weights(state.raw_model)
    is_best = healthy and val < state.best_val
    if is_best:
        state.best_val, state.best_step, state.evals_since_best = val, state.step, 0
    else:
        state.evals_since_best += 1
    run.log.write("eval", **progress_fields(run, state, state.optimizer.param_groups[0]["lr"]),
                  train_loss=losses["train"], val_loss=val, val_ppl=math.exp(min(val, 700)), val_bpb=bpb)
    note = ""
    if healthy:
        save(run, state, run.last_path)
        if is_best:
            save(run, state, run.best_path)
            note = " (best, saved)"
    else:
        note = f"; not finite: {run.last_path} not overwritten"
    ppl = math.exp(min(val, 700))
    tqdm.write(f"step {state.step}: train loss {losses['train']:.4f}, val loss {val:.4f}, "
               f"val ppl {ppl:{'.2f' if ppl < 1e6 else '.3g'}}, val bits/byte {bpb:.3f}{note}")
    note_memorising(run, state, losses["train"], val)


def stop_early(run: Run, state: TrainState) -> bool:
    """--early_stop N: true (and one line) after N evaluations in a row without a new best validation loss."""
    patience = run.args.early_stop
    if not patience or state.evals_since_best < patience:
        return False
    state.early_stopped = True
    tqdm.write(f"early stop at step {state.step}: no new best validation loss in {patience} evaluations; "
               f"{run.best_path} holds step {state.best_step}")
    return True


def stopped(run: Run, state: TrainState, bar: tqdm, signum: int) -> int:
    """After a signal: save where we are (if sound), tell how to continue, exit as the signal would."""
    if state.saved_step != state.step and finite_weights(state.raw_model):
        save(run, state, run.last_path)
    bar.close()
    draw_plot(run.log.path)
    # The script as it was started (e.g. src/train_bpe.py), so the command works from the same folder.
    script = sys.argv[0] if Path(sys.argv[0]).name == "train_bpe.py" else "train_bpe.py"
    print(f"stopped by {signal.Signals(signum).name} at step {state.step}; continue with: "
          f"{run.world.launcher()} {shlex.quote(script)} --resume {shlex.quote(str(run.last_path))}")
    # No rank leaves before rank 0 is done: torchrun stops the remaining ranks once one has exited.
    run.world.barrier()
    return 128 + signum  # as a shell reports a process ended by the signal: 130 for SIGINT, 143 SIGTERM


def finish(run: Run, state: TrainState) -> int:
    """The end of a run: the plot, the summary, and where the best model is."""
    args = run.args
    draw_plot(run.log.path)
    if state.step < args.max_steps and not state.early_stopped:
        print(f"time budget of {args.max_time:.0f}s spent after {state.step} of {args.max_steps} steps")
    if run.world.enabled:
        print(run.world.compare_weights(state.raw_model))
    if not math.isfinite(state.best_val):
        raise TrainingDiverged(
            f"training produced no model with a finite validation loss ({state.skipped.total} of "
            f"{state.step - run.start_step} steps skipped): lower --lr and train again"
        )
    if not state.healthy:
        raise TrainingDiverged(f"the model diverged: its validation loss at step {state.step} is not finite; "
                               f"{kept_checkpoint(run, state)}")
    print(f"done in {state.elapsed():.0f}s; best val loss {state.best_val:.4f}; "
          f"sample with: python sample_bpe.py --ckpt {run.best_path}")
    return 0


# --------------------------------------------------------------------------- checkpoints and progress


def checkpoint_state(run: Run, state: TrainState, rngs: list[dict]) -> dict:
    """Everything a checkpoint holds: the model and its tokenizer, and all a resume needs to continue exactly."""
    return {
        "model": state.raw_model.state_dict(),
        "config": asdict(state.raw_model.config),
        "optimizer": state.optimizer.state_dict(),
        "scaler": state.scaler.state_dict(),
        "step": state.step,
        "world_size": run.world.size,
        "best_val_loss": state.best_val,
        "best_step": state.best_step,
        "evals_since_best": state.evals_since_best,
        "rng": rngs[0],
        **({"rng_ranks": rngs} if run.world.enabled else {}),
        "corpus_fingerprint": run.data.fingerprint,
        "skipped_steps": state.skipped.total,
        "train_time": state.elapsed(),  # seconds trained so far, resumes included, for --max_time
        "args": plain_flags(run.args),
        "tokenizer_path": str(run.data.tok_path),
        **tokenizer.checkpoint_fields(run.data.tok),
        **({"init_from": run.init_from} if run.init_from else {}),
    }


def save(run: Run, state: TrainState, path: Path) -> None:
    """Writes a checkpoint of the current state (rank 0 writes; every rank contributes its random streams)."""
    rngs = run.world.gather(rng_state(state.generator))  # every rank's streams, so a resume under DDP is exact
    if not run.world.is_main:  # every rank holds the same weights; one writer
        return
    save_checkpoint(path, checkpoint_state(run, state, rngs))
    if path == run.last_path:
        state.saved_step = state.step


def kept_checkpoint(run: Run, state: TrainState) -> str:
    """What a stopped run leaves to continue from, said truthfully."""
    if state.saved_step is None:
        return "nothing was saved: start again with a lower --lr"
    by = "as it was before this run" if state.saved_step == run.start_step else "saved by this run"
    return f"{run.last_path} holds step {state.saved_step} ({by}): resume it with a lower --lr"
