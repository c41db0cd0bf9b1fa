"""``batch_size`` is the global batch: how it is split among workers, and the training draws that do
not depend on the split (batches, anchor batches, FLYP's templates) nor on a resume."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainables.config import ConfigError
from trainables.distributed import per_worker_batch, world
from trainables.methods import Batch
from trainables.sampling import GlobalBatchSampler, PerSampleDraws


def test_one_process_is_rank_0_of_1():
    assert world() == (0, 1)


def test_per_worker_batch_divides_or_says_how():
    assert per_worker_batch(512, 8) == 64
    with pytest.raises(ConfigError, match="batch_size 10 is the global batch.*multiple of 4"):
        per_worker_batch(10, 4)


@pytest.mark.parametrize("n,batch,workers", [(32, 8, 2), (37, 12, 4), (6, 8, 2), (7, 8, 4)])
def test_union_of_worker_shares_is_the_one_worker_batch(n, batch, workers):
    one = GlobalBatchSampler(n, batch, seed=3)
    many = [GlobalBatchSampler(n, batch, seed=3, rank=r, world_size=workers)
            for r in range(workers)]
    for s in (one, *many):
        s.set_epoch(5)
    one_batches = list(one)
    shares = [list(s) for s in many]
    assert all(len(s) == len(one_batches) == len(one) for s in shares)
    for t, batch_one in enumerate(one_batches):
        union = [i for s in shares for i in s[t]]
        assert len({len(s[t]) for s in shares}) == 1, "equal shares: all_gather needs them"
        if len(batch_one) % workers == 0:
            assert union == batch_one
        else:   # a set smaller than the batch: trimmed to a multiple of the workers
            assert union == batch_one[:len(union)] and len(batch_one) - len(union) < workers


def test_batches_are_a_function_of_seed_and_epoch():
    def epoch(e, seed=0):
        s = GlobalBatchSampler(40, 8, seed)
        s.set_epoch(e)
        return list(s)

    assert epoch(2) == epoch(2)                     # a resumed run draws the same
    assert epoch(2) != epoch(3) and epoch(2) != epoch(2, seed=1)
    assert sorted(i for b in epoch(2) for i in b) == list(range(40))


def test_anchor_batches_continue_past_one_pass():
    s = GlobalBatchSampler(10, 4, seed=0, num_batches=7)
    batches = list(s)
    assert len(batches) == 7 and all(len(b) == 4 for b in batches)
    assert sorted(i for b in batches[:2] for i in b) == sorted(set(i for b in batches[:2]
                                                                   for i in b))


def test_per_sample_draws_depend_on_seed_epoch_and_index_only():
    draws = PerSampleDraws(seed=1, choices=7)
    indices = torch.tensor([5, 3000, 17, 2048, 0, 9])
    first = draws(0, indices)
    assert ((first >= 0) & (first < 7)).all()
    # any order, any split of the batch, a fresh object (a resumed run): the same draws
    again = PerSampleDraws(seed=1, choices=7)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    assert torch.equal(again(0, indices[perm]), first[perm])
    assert torch.equal(torch.cat([draws(0, indices[:2]), draws(0, indices[2:])]), first)
    many = torch.arange(5000)
    assert not torch.equal(draws(1, many), draws(0, many))            # a new epoch redraws
    assert not torch.equal(PerSampleDraws(2, 7)(0, many), draws(0, many))
    assert torch.bincount(draws(0, many), minlength=7).min() > 500    # roughly uniform


def test_flyp_templates_follow_the_sample_index(micro_classifier, make_context):
    from trainables.config import split_config
    from trainables.methods import get_method_class

    cls = get_method_class("flyp")
    train, params = split_config({"seed": 4}, cls.Params)
    method = cls(params, train)
    method.setup(micro_classifier, make_context(micro_classifier, reference=False))
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    indices = torch.tensor([10, 11, 12, 13, 14, 15])
    whole = method.prompt_tokens(Batch(labels=labels, indices=indices, epoch=2))
    halves = torch.cat([method.prompt_tokens(Batch(labels=labels[i::2], indices=indices[i::2],
                                                   epoch=2)) for i in (0, 1)])
    order = torch.cat([torch.arange(0, 6, 2), torch.arange(1, 6, 2)])
    assert torch.equal(halves, whole[order]), "two workers draw what one worker draws"


# --- the CLI, the docs and the space files say it -------------------------------------------------
ROOT = Path(__file__).resolve().parent.parent


def test_batch_that_does_not_divide_among_workers_exits_2(capsys, tmp_path, monkeypatch):
    from search.run import main

    monkeypatch.chdir(ROOT)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(["--method", "flyp", "--space", "spaces/flyp.yaml", "--workers-per-trial", "3",
              "--set", "batch_size={choice: [96, 128]}", "--output", str(out)])
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert exc.value.code == 2 and len(lines) == 1, lines
    assert "batch_size 128 is the global batch" in lines[0] and "multiple of 3" in lines[0]
    assert not out.exists()


def test_batch_split_check_accepts_multiples():
    from search.space import load_space
    from search.study import StudyError, check_batch_split

    space = load_space(ROOT / "spaces" / "flyp.yaml", "flyp")
    check_batch_split(space, 4)                       # 128 / 4
    check_batch_split(load_space(ROOT / "spaces" / "flyp.yaml", "flyp",
                                 {"batch_size": {"choice": [4, 8]}}), 2)
    with pytest.raises(StudyError, match="batch_size 5 "):
        check_batch_split(load_space(ROOT / "spaces" / "flyp.yaml", "flyp",
                                     {"batch_size": {"int": [4, 5]}}), 2)


def test_help_readme_and_every_space_say_batch_size_is_global():
    proc = subprocess.run([sys.executable, "-m", "search.run", "--help"], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    help_text = " ".join(proc.stdout.split())
    assert "batch_size is the GLOBAL batch" in help_text and "per worker" not in help_text
    assert "`batch_size` is the **global** batch" in (ROOT / "README.md").read_text()
    spaces = sorted((ROOT / "spaces").glob("*.yaml"))
    assert spaces
    for path in spaces:
        line = next(ln for ln in path.read_text().splitlines()
                    if ln.strip().startswith("batch_size:"))
        assert "GLOBAL batch" in line, path


# --- python -m search.bench --only ddp: its cases and its verdict --------------------------------
def test_every_trainable_method_is_compared():
    from search.bench.ddp import trainable_cases
    from trainables.methods import METHODS

    assert {c.method for c in trainable_cases()} == {
        n for n, cls in METHODS.items() if not cls.trains_nothing}


def test_bench_ddp_prints_one_line_per_method_and_fails_above_tolerance(monkeypatch, capsys):
    import search.bench.ddp as bench_ddp
    from search.bench.ddp import DdpComparison

    good = DdpComparison("ft", [1.0, 0.9], [1.0, 0.9], 2e-7, 1e-7, True)
    bad = DdpComparison("flyp", [1.0, 0.9], [1.0, 1.2], 0.33, 0.1, True)
    unsharded = DdpComparison("arf", [1.0, 0.9], [1.0, 0.9], 0.0, 0.0, False)
    for results, code in (([good], 0), ([good, bad], 1), ([unsharded], 1)):
        monkeypatch.setattr(bench_ddp, "compare_ddp", lambda spec, r=results: r)
        assert bench_ddp.main(Path("unused")) == code
        lines = capsys.readouterr().out.splitlines()
        assert lines[:len(results)] == [
            f"{r.case} max_rel_step_loss_diff={r.max_rel_step_loss_diff:.2e} "
            f"max_rel_output_diff={r.max_rel_output_diff:.2e}" for r in results]
