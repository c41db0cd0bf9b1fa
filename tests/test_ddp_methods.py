"""Every trainable method of the registry: a 2-worker DDP run (CPU, gloo, torch.multiprocessing)
follows the 1-worker trajectory at the same global batch, step by step, within 1e-4 relative.

What it checks (``search.bench.ddp.compare_ddp``, the code ``python -m search.bench --only ddp``
runs): the loop's global-batch sharding, the contrastive terms over the global batch (FLYP, ARF's
three terms, CLIP-CITE's masked L_SCL and its batch-level L_VLD, FLYP's optional same-class mask),
per-sample template draws and ARF's anchor batches that do not depend on the split, and the
gradient scaling under DDP. Before the global-batch losses, ``flyp``, ``arf`` and ``clip-cite``
differed from one worker by 35-47% per step (recorded in BENCHMARKS.md).
"""
from __future__ import annotations

import pytest

from search.bench.ddp import RTOL, Case, compare_ddp, trainable_cases
from search.bench.tiny_data import write_tiny_spec

# non-default variants whose contrastive term takes another code path
VARIANTS = [Case("flyp", (("mask_same_class", True),)), Case("arf", (("mask_same_class", True),))]
CASES = trainable_cases() + VARIANTS

pytestmark = pytest.mark.slow     # two spawned processes import torch and train 11 short runs


@pytest.fixture(scope="module")
def comparisons(tmp_path_factory):
    spec = write_tiny_spec(tmp_path_factory.mktemp("ddp-methods"), per_class=8)  # 32 train images
    return {c.case: c for c in compare_ddp(spec, CASES, workers=2)}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_two_workers_follow_one_worker(comparisons, case):
    result = comparisons[case.name]
    print(f"\n{case.name}: 1 worker {[round(x, 5) for x in result.steps_one]}\n"
          f"{'':{len(case.name)}}  2 workers {[round(x, 5) for x in result.steps_many]}")
    assert len(result.steps_one) >= 8 and len(result.steps_many) == len(result.steps_one)
    assert result.sharded, "each worker must take its half of every one-worker batch"
    assert result.steps_many == pytest.approx(result.steps_one, rel=RTOL)
    assert result.max_rel_step_loss_diff <= RTOL
    assert result.max_rel_output_diff <= RTOL       # the weights after the last step
    assert result.steps_one[-1] != result.steps_one[0]          # it trained
    assert result.ok
