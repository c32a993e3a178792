"""CLI polish: examples at the end of --help, closest-flag suggestions, the compact config block."""

import pytest

import export_gguf
import export_hf
import sample_bpe
import train_bpe


@pytest.mark.parametrize("module", [train_bpe, sample_bpe, export_hf, export_gguf])
def test_help_ends_with_worked_examples(module, capsys):
    with pytest.raises(SystemExit) as exit_:
        module.main(["--help"])
    assert exit_.value.code == 0
    tail = capsys.readouterr().out.rstrip().split("examples:")[-1].strip().splitlines()
    assert len(tail) >= 2 and all(line.strip().startswith("python") for line in tail)


def test_unknown_flag_suggests_the_closest_one(capsys):
    with pytest.raises(SystemExit) as exit_:
        train_bpe.main(["--lrr", "3e-4", "--max_step", "10"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--lrr" in err and "did you mean --lr?" in err


def test_unknown_flag_far_from_any_gets_no_guess(capsys):
    with pytest.raises(SystemExit):
        sample_bpe.main(["--xyzzy"])
    err = capsys.readouterr().err
    assert "unrecognized arguments: --xyzzy" in err and "did you mean" not in err


def test_config_block_is_compact_and_complete():
    args, _ = train_bpe.parse_args(["--preset", "cpu", "--data_file", "some.txt"])
    block = train_bpe.format_config(args)
    lines = block.splitlines()
    assert lines[0] == "config:" and len(lines) <= 15  # 6 groups, a few wrapped lines each
    assert all(len(line) <= 100 for line in lines)
    for name, value in vars(args).items():
        if value is not None:
            assert f"{name}={value}" in block
    assert "data_dir=" not in block  # unset flags are left out
