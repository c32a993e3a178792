"""Training on several processes with PyTorch's DistributedDataParallel, launched by torchrun.

torchrun starts one process per device and tells each its place through environment variables:
RANK (0 .. WORLD_SIZE-1 across all nodes), LOCAL_RANK (its index on this node, which picks its GPU) and
WORLD_SIZE. Without them we are one process: no process group is created and every helper here is the
identity, so single-process code paths do not change.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

# Rank 0 alone trains the tokenizer and encodes the corpus while the other ranks wait in a collective.
# On a large corpus that takes far longer than the default collective timeout (10 min for NCCL), which would
# kill the waiting ranks. The price of a long timeout: a genuinely hung collective is reported late.
TIMEOUT = datetime.timedelta(hours=2)

# Rank r draws its batches from seed + r * SEED_STRIDE: far enough apart that no rank's stream is another
# stream the trainer uses (evaluation draws from seed + 1, on rank r from seed + 1 + r * SEED_STRIDE).
SEED_STRIDE = 1000


class DistributedError(Exception):
    """A launch the trainer cannot run under (bad torchrun environment, device mismatch): one line."""


class RankZeroFailed(Exception):
    """Rank 0 stopped while this rank waited for it; rank 0 has already said why."""


@dataclass(frozen=True)
class World:
    """This process's place in the job and its device. Single process: rank 0 of 1, no process group."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1
    local_size: int = 1  # processes on this node
    device: torch.device = torch.device("cpu")
    enabled: bool = False  # True when a process group exists (launched by torchrun)

    @property
    def is_main(self) -> bool:
        """Rank 0 prepares data, prints, and writes every file."""
        return self.rank == 0

    def rank_seed(self, seed: int) -> int:
        """This rank's version of seed (for batches, dropout); rank 0 (and a single process) keeps seed."""
        return seed + self.rank * SEED_STRIDE

    def barrier(self) -> None:
        """Waits until every rank gets here."""
        if self.enabled:
            dist.barrier()

    def broadcast(self, value):
        """Rank 0's value (any picklable object) on every rank."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def wait_for_main(self):
        """On ranks other than 0: waits for rank 0's broadcast and returns its value.

        If rank 0 fails first (a bad corpus, say), gloo reports the closed connection as a RuntimeError;
        that becomes RankZeroFailed so this rank exits quietly. (NCCL ranks wait until torchrun stops them.)
        """
        try:
            return self.broadcast(None)
        except RuntimeError:
            raise RankZeroFailed() from None

    def gather(self, value) -> list:
        """Every rank's value (any picklable object), in rank order, on every rank."""
        if not self.enabled:
            return [value]
        out = [None] * self.size
        dist.all_gather_object(out, value)
        return out

    def mean(self, value: float) -> float:
        """The mean of value over all ranks (every rank gets the same number)."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.item() / self.size

    def all(self, flag: bool) -> bool:
        """True on every rank if flag is True on every rank, so that all ranks take the same branch."""
        return not self.max(int(not flag))

    def agreed_signal(self, signum: int | None) -> int | None:
        """The stop signal some rank has received (the highest number if several), on every rank; else None.

        A signal may reach one rank only (a scheduler killing one process) or all of them at slightly different
        moments. Each rank reads its flag once, here, at the same point of the same step, so every rank stops
        after the same step; a signal that lands after this call counts at the next step.
        """
        return int(self.max(signum or 0)) or None

    def max(self, value: float) -> float:
        """The largest value over all ranks, on every rank (e.g. the training clock, so all agree on time)."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.item()

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """model inside DistributedDataParallel (gradients averaged across ranks in backward)."""
        if not self.enabled:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def grad_sync(self, model: torch.nn.Module, sync: bool):
        """Context for one micro-step's forward and backward; sync=False skips DDP's all-reduce.

        With gradient accumulation, only the last micro-step needs to average gradients across ranks; the
        earlier ones just accumulate locally (DDP's no_sync), saving grad_accum_steps - 1 all-reduces.
        """
        if not self.enabled or sync:
            return contextlib.nullcontext()
        return model.no_sync()

    def launcher(self) -> str:
        """How to start this job again: python, or torchrun with this job's shape where we know it."""
        if not self.enabled:
            return "python"
        if self.local_size == self.size:  # one node
            return f"torchrun --standalone --nproc_per_node={self.size}"
        return "torchrun <this job's torchrun flags, on every node>"

    def rng_for_resume(self, state: dict, fresh: dict) -> tuple[dict, str | None]:
        """This rank's random streams to restore from a checkpoint, and a note when the resume is not exact.

        A DDP checkpoint holds every rank's streams ("rng_ranks"); "rng" is rank 0's (a single process's).
        With another number of processes, rank 0 continues rank 0's streams and the others keep fresh ones.
        """
        saved = state.get("rng_ranks") or [state["rng"]]
        if len(saved) == self.size:
            return saved[self.rank], None
        note = (f"the checkpoint was written by {len(saved)} process(es) and this run has {self.size}: training "
                f"continues, but with other random batches than an uninterrupted run (and see the effective batch)")
        return (state["rng"] if self.is_main else fresh), note

    def compare_weights(self, model: torch.nn.Module) -> str:
        """A line saying whether every rank ended with bitwise the same weights, with each rank's digest.

        DDP keeps replicas equal by construction; this is the check that it did (a rank that skipped an
        all-reduce, or drew a different learning rate, would show up here).
        """
        digests = self.gather(state_digest(model.state_dict()))
        verdict = "identical" if len(set(digests)) == 1 else "DIFFERENT: the replicas drifted apart, please report this"
        return f"weights sha256 by rank: {' '.join(f'{r}={d}' for r, d in enumerate(digests))} ({verdict})"

    def quiet(self):
        """Silences prints and progress bars on every rank but 0, which speaks for the job."""
        return quiet(not self.is_main)

    def cleanup(self) -> None:
        """Leaves the process group; call once the training objects (the DDP wrapper) are out of scope."""
        if self.enabled and dist.is_initialized():
            # DDP's reducer sits in a reference cycle. Left for the interpreter's exit, it is freed after the
            # group is gone and gloo aborts the process ("terminate called without an active exception", in
            # 14 of 30 two-process runs on torch 2.13, CPU); collecting it first made it 0 of 30.
            gc.collect()
            dist.destroy_process_group()


def launched_by_torchrun(environ=os.environ) -> bool:
    return "WORLD_SIZE" in environ


def setup(device_name: str, resolve_device, environ=os.environ) -> World:
    """Joins the process group torchrun describes in the environment, or returns the single-process World.

    resolve_device(name) -> torch.device is the trainer's device parser (used unchanged for one process).
    Under torchrun each process takes one device: cuda:LOCAL_RANK with NCCL, or the CPU with gloo.
    """
    if not launched_by_torchrun(environ):
        return World(device=resolve_device(device_name))
    try:
        rank, local_rank, world_size = (int(environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
        local_size = int(environ.get("LOCAL_WORLD_SIZE", world_size))
    except (KeyError, ValueError):
        raise DistributedError(
            "WORLD_SIZE is set but RANK/LOCAL_RANK are missing or not numbers: launch with torchrun"
        ) from None
    device = _rank_device(device_name, local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend, timeout=TIMEOUT, device_id=device if device.type == "cuda" else None,
    )
    return World(rank, local_rank, world_size, local_size, device, enabled=True)


def _rank_device(name: str, local_rank: int) -> torch.device:
    """cuda:LOCAL_RANK for --device auto (on a GPU machine) or cuda; the CPU for cpu or auto without GPUs."""
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if name not in ("auto", "cuda"):
        raise DistributedError(
            f"--device {name} cannot be used under torchrun: pass --device cuda (each process takes "
            f"cuda:LOCAL_RANK) or --device cpu"
        )
    if not torch.cuda.is_available():
        raise DistributedError("--device cuda but this machine has no CUDA GPU: pass --device cpu")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise DistributedError(
            f"LOCAL_RANK {local_rank} has no GPU: this node has {count}; use --nproc_per_node {count} or fewer"
        )
    return torch.device("cuda", local_rank)


def state_digest(state_dict: dict) -> str:
    """sha256 over a state_dict's names and exact tensor bytes: equal digests mean bitwise-equal weights."""
    h = hashlib.sha256()
    for name, tensor in state_dict.items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def env_rank(environ=os.environ) -> int:
    """This process's global rank as torchrun set it (0 when not launched by torchrun)."""
    try:
        return int(environ.get("RANK", "0"))
    except ValueError:
        return 0


@contextlib.contextmanager
def quiet(enabled: bool = True):
    """Sends stdout and stderr (prints, tqdm bars) to /dev/null while enabled.

    Exceptions still propagate and are reported after the context exits, so a failing rank is heard.
    """
    if not enabled:
        yield
        return
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), contextlib.redirect_stderr(devnull):
        yield
