"""What a training run shows while it trains: the progress bar, metrics records, notes for the user, the plot.

Nothing here changes the run: these functions read trainer.py's Run and TrainState (its clock through
TrainState's methods) and write to the terminal, metrics.jsonl and loss.png.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

import metrics
from files import OutputError
from schedule import progress

if TYPE_CHECKING:
    from trainer import Run, TrainState

BAR_UNITS = 1000  # a time-budgeted run's bar counts thousandths of the budget
MEMORISING_EVALS = 3  # validation loss up (and training loss down) at this many evaluations in a row


def progress_bar(run: Run, state: TrainState) -> tqdm:
    """Steps out of --max_steps; with --max_time, the share of the run spent (the larger of steps and time),
    so that its ETA follows whichever limit ends the run first."""
    if run.args.max_time:
        start = bar_position(run, state.step, state.time_before)
        return tqdm(total=BAR_UNITS, initial=start, desc="training", dynamic_ncols=True,
                    bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]")
    return tqdm(total=run.args.max_steps, initial=state.step, desc="training", unit=" steps", dynamic_ncols=True)


def bar_position(run: Run, step: int, elapsed: float) -> int:
    return int(BAR_UNITS * progress(step, run.args.max_steps, elapsed, run.args.max_time))


def report(run: Run, state: TrainState, bar: tqdm, loss: float, lr: float) -> None:
    """Moves the bar, shows loss / lr / speed / epoch on it, and logs a train record every --log_interval."""
    args = run.args
    elapsed = run.world.max(state.elapsed())
    postfix = dict(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_second(run, state):,.0f}",
                   epoch=f"{epoch(run, state):.2f}")
    if state.skipped.total:
        postfix["skipped"] = state.skipped.total
    if state.step == run.start_step + 1:
        warn_if_hours(run, state)
    if args.max_time:
        postfix = {"step": state.step, **postfix}
        bar.update(bar_position(run, state.step, elapsed) - bar.n)
    else:
        bar.update(1)
    bar.set_postfix(postfix, refresh=False)
    if state.step % args.log_interval == 0:
        run.log.write("train", **progress_fields(run, state, lr), loss=loss)


def progress_fields(run: Run, state: TrainState, lr: float) -> dict:
    """Where the run is, for every metrics record: step, tokens, seconds, lr, speed, epoch."""
    return dict(step=state.step, tokens=state.step * run.tokens_per_step, elapsed=round(state.elapsed(), 3),
                lr=lr, tok_s=round(tokens_per_second(run, state), 1), epoch=round(epoch(run, state), 4))


def tokens_per_second(run: Run, state: TrainState) -> float:
    """Training speed of this process's run so far (a resume counts from where it started)."""
    return (state.step - run.start_step) * run.tokens_per_step / max(state.run_seconds(), 1e-9)


def epoch(run: Run, state: TrainState) -> float:
    """Passes over the training tokens so far (tokens seen / training tokens)."""
    return state.step * run.tokens_per_step / max(len(run.data.token_data.train), 1)


def warn_if_hours(run: Run, state: TrainState) -> None:
    """After the first step: one line when this run would take more than an hour at this speed."""
    args, per_step = run.args, state.run_seconds()
    left = per_step * (args.max_steps - state.step)
    if args.max_time:
        left = min(left, args.max_time - state.elapsed())
    if left > 3600:
        tqdm.write(f"note: a step takes {per_step:.1f}s on {run.world.device}, so this run would take about "
                   f"{left / 3600:.0f} hours; --preset cpu trains a small model in minutes, and --max_time "
                   f"bounds any run (e.g. --max_time 30:00)")


def note_small_corpus(model, run_data, best_name: str, small_below: float = 1.0) -> None:
    """One line when the corpus is small for the model (fewer than small_below training tokens per parameter:
    the run's --dropout_below where it has one, which was measured), so that memorising it is what to expect."""
    tokens, params = len(run_data.token_data.train), model.num_params(non_embedding=False)
    if tokens >= small_below * params:
        return
    print(f"note: {tokens:,} training tokens for {params / 1e6:.2f}M parameters ({tokens / params:.2f} per "
          f"parameter) is a small corpus for this model: after a few passes it starts to memorise the text "
          f"(validation loss rises; {best_name} keeps the best point). More text, a smaller model (--n_layer, "
          f"--n_embed), --dropout 0.1-0.3 (--dropout_after N starts it after N passes; --attn_dropout 0 keeps "
          f"CPU steps fast) or --early_stop help")


def note_memorising(run: Run, state: TrainState, train: float, val: float) -> None:
    """One line, once, when the validation loss keeps rising while the training loss keeps falling."""
    state.recent = [*state.recent, (train, val)][-(MEMORISING_EVALS + 1) :]
    if state.noted_memorising or len(state.recent) <= MEMORISING_EVALS:
        return
    if all(b[1] > a[1] and b[0] < a[0] for a, b in zip(state.recent, state.recent[1:])):
        best = f"step {state.best_step}" if state.best_step is not None else "the best evaluation"
        stop = f"; --early_stop {run.args.early_stop} ends the run" if run.args.early_stop else (
            f"; --early_stop {MEMORISING_EVALS} would have ended the run here")
        tqdm.write(f"note: the validation loss has risen for {MEMORISING_EVALS} evaluations while the training loss "
                   f"fell: the model is memorising its training text; {run.best_path} holds {best}{stop}")
        state.noted_memorising = True


def draw_plot(metrics_path: Path | None) -> None:
    """loss.png beside the metrics file, or one line on how to get it; nothing before the first record."""
    if metrics_path is None:  # a DDP rank other than 0: it keeps no metrics
        return
    if not metrics.have_matplotlib():
        print(f"{metrics.PLOT_HINT}; the numbers are in {metrics_path}")
        return
    try:
        print(f"loss plot: {metrics.plot_metrics(metrics_path, metrics_path.with_name(metrics.PLOT_NAME))}")
    except metrics.MetricsError:  # stopped before the first record: nothing to draw yet
        pass
    except OSError as exc:
        raise OutputError(f"cannot write {metrics_path.with_name(metrics.PLOT_NAME)} ({exc.strerror or exc}); "
                          f"the checkpoints are saved") from None
