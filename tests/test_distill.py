"""--distill_from: the loss against a teacher's distributions, what a distilled run learns, resuming one."""

import math

import pytest
import torch
import torch.nn.functional as F

import lm_loss
import train_bpe
import trainer
from checkpoint import load_checkpoint, load_model

from helpers import TINY_MODEL_ARGS, signal_at_step

EPS32 = torch.finfo(torch.float32).eps
LAST, BEST = trainer.LAST_NAME, trainer.BEST_NAME


def problem(n=300, width=64, teacher_width=48, vocab=517, seed=0):
    """Student hidden states and output weight, a teacher's (of another width), targets with every 7th ignored."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, width, generator=g, dtype=torch.float64)
    w = torch.randn(vocab, width, generator=g, dtype=torch.float64) * 0.2
    th = torch.randn(n, teacher_width, generator=g, dtype=torch.float64)
    tw = torch.randn(vocab, teacher_width, generator=g, dtype=torch.float64) * 0.3
    targets = torch.randint(0, vocab, (n,), generator=g)
    targets[::7] = -1
    return h, w, th, tw, targets


@pytest.mark.parametrize("softcap, teacher_softcap, share", [(0.0, 0.0, 0.5), (5.0, 8.0, 0.3), (0.0, 0.0, 1.0)])
def test_the_chunked_distilled_loss_and_gradients_equal_the_whole_logits_ones(softcap, teacher_softcap, share):
    h, w, th, tw, targets = problem()
    assert h.size(0) % lm_loss.chunk_rows(h.size(1))  # the last chunk is a partial one

    def whole(h, w):  # float64 reference from whole logits
        logits = lm_loss.capped(F.linear(h, w), softcap)
        return lm_loss.distilled_cross_entropy(logits, targets, lm_loss.capped(F.linear(th, tw), teacher_softcap),
                                               share)

    def chunked(h, w):
        teacher = lm_loss.Teacher(th.float(), tw.float(), teacher_softcap, share)
        return lm_loss.cross_entropy(h, w, targets, softcap, teacher)

    results = []
    for fn, dtype in ((whole, torch.float64), (chunked, torch.float32)):
        hh, ww = h.clone().to(dtype).requires_grad_(), w.clone().to(dtype).requires_grad_()
        loss = fn(hh, ww)
        (3 * loss).backward()
        results.append((loss.double(), hh.grad.double(), ww.grad.double()))
    (ref, ref_h, ref_w), (got, got_h, got_w) = results
    # float32 sums of up to vocab (517) terms: relative errors of a few eps * sqrt(terms)
    tol = 8 * EPS32 * math.sqrt(517)
    assert got.item() == pytest.approx(ref.item(), rel=tol)
    assert (got_h - ref_h).abs().max() <= tol * ref_h.abs().max()
    assert (got_w - ref_w).abs().max() <= tol * ref_w.abs().max()


def test_the_distilled_loss_is_the_mix_of_the_two_cross_entropies():
    _, _, th, tw, targets = problem(n=20)
    logits, teacher_logits = torch.randn(20, 517, dtype=torch.float64), F.linear(th, tw)
    keep = targets != -1
    hard = F.cross_entropy(logits[keep], targets[keep])
    soft = F.cross_entropy(logits[keep], teacher_logits[keep].softmax(-1))  # probabilities as targets
    got = lm_loss.distilled_cross_entropy(logits, targets, teacher_logits, 0.25)
    assert got.item() == pytest.approx(0.75 * hard.item() + 0.25 * soft.item(), rel=1e-12)
    # the teacher's own distribution is the best a student can do on the soft part: its cross-entropy is the
    # teacher's entropy, lower than that of any other logits
    entropy = F.cross_entropy(teacher_logits[keep], teacher_logits[keep].softmax(-1))
    assert entropy < soft


def run_args(tiny_file, out, *extra) -> list[str]:
    """The tiny model's flags, less its vocabulary size: a student's tokenizer is the teacher's."""
    at = TINY_MODEL_ARGS.index("--vocab_size")
    model_args = TINY_MODEL_ARGS[:at] + TINY_MODEL_ARGS[at + 2 :]
    return [*model_args, "--data_file", str(tiny_file), "--out_dir", str(out), "--eval_iters", "2",
            "--use_cosine", "--warmup_steps", "3", "--lr", "3e-3", *extra]


@pytest.fixture(scope="module")
def teacher(tiny_file, tmp_path_factory):
    """A teacher: the tiny model trained for 60 steps, with its own tokenizer (280 tokens, unlike tiny_run's)."""
    out = tmp_path_factory.mktemp("teacher")
    assert train_bpe.main(run_args(tiny_file, out, "--tokenizer_path", str(out / "tok.json"), "--vocab_size", "280",
                                   "--max_steps", "60",
                                   "--eval_interval", "60")) == 0
    return out / BEST


def divergence_from(teacher_path, student_path) -> float:
    """Mean KL(teacher || student) over the tiny corpus' first windows: how far the student is from the teacher."""
    teacher_model, tok, _, _ = load_model(teacher_path)
    student, student_tok, _, _ = load_model(student_path)
    assert student_tok.to_str() == tok.to_str()
    text = open(load_checkpoint(teacher_path)["args"]["data_file"], encoding="utf-8").read()
    ids = torch.tensor(tok.encode(text).ids[: 16 * 32]).view(16, 32)
    with torch.no_grad():
        p = teacher_model(ids)[0].log_softmax(-1)
        q = student(ids)[0].log_softmax(-1)
    return (p.exp() * (p - q)).sum(-1).mean().item()


def test_a_distilled_student_learns_the_teachers_distributions(teacher, tiny_file, tmp_path, capsys):
    """Another seed than the teacher's, the same steps: with the teacher's distributions as its targets the
    student ends much closer to the teacher than when it learns the text alone."""
    flags = ["--max_steps", "60", "--eval_interval", "60", "--seed", "7"]
    tok = ["--tokenizer", str(teacher.parent / "tok.json")]
    assert train_bpe.main(run_args(tiny_file, tmp_path / "alone", *flags, *tok)) == 0
    distil = ["--distill_from", str(teacher), "--distill_weight", "1"]
    assert train_bpe.main(run_args(tiny_file, tmp_path / "taught", *flags, *distil)) == 0
    out = capsys.readouterr().out
    assert f"distill_from: our checkpoint {teacher}" in out
    assert load_checkpoint(tmp_path / "taught" / LAST)["args"]["distill_from"] == str(teacher)
    alone = divergence_from(teacher, tmp_path / "alone" / LAST)
    taught = divergence_from(teacher, tmp_path / "taught" / LAST)
    assert taught < 0.5 * alone, (taught, alone)


def test_a_distilled_run_resumes_exactly(teacher, tiny_file, tmp_path, monkeypatch):
    """Ctrl-C mid-run, then --resume with no other flag: the teacher comes back from the checkpoint's flags, and
    the run ends bitwise as one that was never interrupted."""
    flags = ["--max_steps", "10", "--eval_interval", "5", "--dropout", "0.1", "--distill_from", str(teacher)]
    assert train_bpe.main(run_args(tiny_file, tmp_path / "full", *flags)) == 0
    signal_at_step(monkeypatch, 6)
    assert train_bpe.main(run_args(tiny_file, tmp_path / "part", *flags)) == 130
    monkeypatch.undo()
    assert train_bpe.main(["--resume", str(tmp_path / "part" / LAST)]) == 0
    full, part = load_checkpoint(tmp_path / "full" / LAST), load_checkpoint(tmp_path / "part" / LAST)
    assert full["step"] == part["step"] == 10
    for name, tensor in full["model"].items():
        assert torch.equal(tensor, part["model"][name]), name


def test_a_teacher_with_another_tokenizer_is_refused_in_one_line(teacher, tiny_file, tiny_run, tmp_path, capsys):
    """--init_from and --distill_from models that split text differently: nothing to distil between them."""
    code = train_bpe.main(run_args(tiny_file, tmp_path / "out", "--max_steps", "5", "--init_from",
                                   str(tiny_run / BEST), "--distill_from", str(teacher)))
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another tokenizer than --init_from" in err[0] and "--distill_from" in err[0]
    assert not (tmp_path / "out" / LAST).exists()


def test_a_model_can_start_from_one_checkpoint_and_distil_another_of_the_same_tokenizer(teacher, tiny_file, tmp_path):
    """--init_from and --distill_from together (here the same model: fine-tune it against its own old
    predictions, a brake on forgetting); the run records both."""
    out = tmp_path / "out"
    assert train_bpe.main(run_args(tiny_file, out, "--max_steps", "4", "--eval_interval", "4", "--init_from",
                                   str(teacher), "--distill_from", str(teacher))) == 0
    state = load_checkpoint(out / LAST)
    assert state["init_from"]["path"] == str(teacher) and state["args"]["distill_from"] == str(teacher)
