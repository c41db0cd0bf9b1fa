"""Where a trial trains (``search.tune.plan``), on the plan alone: no GPU needed.

By default a trial that uses a GPU, or several workers, runs under a Ray Train worker group and a
one-worker CPU trial in the reused Tune trial actor; ``--trial-runner`` picks either way. The
Tuner and the trainable take their retries, actor reuse and reservations from the plan. The GPU
device inside a trial actor is chosen by one small function (``trainables.device.trial_device``),
and fractional GPUs are planned on Ray's logical GPUs (``ray.init(num_gpus=1)`` on this CPU box).
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from search.runspec import RunSpec
from search.tune.plan import plan_trial
from search.tune.trial import StudySetup
from trainables.device import loader_workers, prefetch_factor, trial_device


def _setup(**kw) -> StudySetup:
    return StudySetup(RunSpec(method="ft", model="m", pretrained=None, data="d"), storage_path="s",
                      **kw)


def test_gpu_trial_is_a_worker_group_and_cpu_trial_runs_in_the_actor_by_default():
    gpu = plan_trial("auto", workers=1, cpus_per_worker=4, gpus_per_worker=1, max_failures=2)
    assert gpu.runner == "worker-group" and gpu.use_gpu and gpu.num_workers == 1
    assert gpu.worker_resources == {"CPU": 4, "GPU": 1}        # what each Train worker reserves
    assert gpu.actor_resources == {"cpu": 1.0}                 # the trial driver
    assert gpu.total == {"CPU": 5, "GPU": 1}
    assert not gpu.reuse_actors
    assert (gpu.tune_max_failures, gpu.train_max_failures) == (2, 2)   # driver and workers

    cpu = plan_trial("auto", workers=1, cpus_per_worker=2, gpus_per_worker=0, max_failures=2)
    assert cpu.runner == "actor" and cpu.in_actor and not cpu.use_gpu
    assert cpu.actor_resources == {"cpu": 2} and cpu.worker_resources == {}
    assert cpu.total == {"CPU": 2, "GPU": 0} and cpu.reuse_actors
    assert (cpu.tune_max_failures, cpu.train_max_failures) == (2, 0)

    frac = plan_trial("auto", workers=1, cpus_per_worker=1, gpus_per_worker=0.25)
    assert frac.runner == "worker-group" and frac.worker_resources == {"CPU": 1, "GPU": 0.25}
    ddp = plan_trial("auto", workers=2, cpus_per_worker=1, gpus_per_worker=0)
    assert ddp.runner == "worker-group" and ddp.total == {"CPU": 3, "GPU": 0}


def test_the_flag_picks_either_way_explicitly():
    actor_gpu = plan_trial("actor", workers=1, cpus_per_worker=2, gpus_per_worker=0.5)
    assert actor_gpu.in_actor and actor_gpu.actor_resources == {"cpu": 2, "gpu": 0.5}
    group_cpu = plan_trial("worker-group", workers=1, cpus_per_worker=2, gpus_per_worker=0)
    assert group_cpu.runner == "worker-group" and group_cpu.worker_resources == {"CPU": 2}
    with pytest.raises(ValueError, match="one worker per trial"):
        plan_trial("actor", workers=2, cpus_per_worker=1, gpus_per_worker=0)
    with pytest.raises(ValueError, match="choose one of"):
        plan_trial("threads", workers=1, cpus_per_worker=1, gpus_per_worker=0)
    # StudySetup's accounting is the plan's
    setup = _setup(gpus_per_worker=1, cpus_per_worker=3)
    assert not setup.in_trial_process and setup.trial_resources == {"CPU": 4, "GPU": 1}
    setup = _setup(gpus_per_worker=1, cpus_per_worker=3, trial_runner="actor")
    assert setup.in_trial_process and setup.trial_resources == {"CPU": 3, "GPU": 1}


def test_tuner_and_trainable_follow_the_plan(tmp_path):
    from search.tune.tuner import make_trainable, make_tuner

    def tuner(setup: StudySetup):
        return make_tuner(setup, {}, study_name="s", sampler="tpe", seed=0, scheduler="fifo",
                          grace_period=1, reduction_factor=2, num_samples=1,
                          max_concurrent_trials=1, callbacks=[], storage_path=tmp_path)._local_tuner

    group = tuner(_setup(gpus_per_worker=1, max_failures=3))
    assert group.get_run_config().failure_config.max_failures == 3   # Tune restarts the driver
    assert group._tune_config.reuse_actors is False
    actor = tuner(_setup(max_failures=3))
    assert actor.get_run_config().failure_config.max_failures == 3
    assert actor._tune_config.reuse_actors is True
    assert make_trainable(_setup(gpus_per_worker=1))._resources.bundles == [{"CPU": 1.0}]
    assert make_trainable(_setup(gpus_per_worker=0.5, trial_runner="actor")
                          )._resources.bundles == [{"CPU": 1.0, "GPU": 0.5}]


def test_trial_device_selection():
    assert trial_device(0, ["0"], "0") == torch.device("cpu")
    # Ray set CUDA_VISIBLE_DEVICES to the assigned GPU: it is device 0 of this process
    assert trial_device(1, ["3"], "3") == torch.device("cuda", 0)
    assert trial_device(0.25, ["3"], "3") == torch.device("cuda", 0)    # a shared fraction
    assert trial_device(2, ["5", "2"], "2,5") == torch.device("cuda", 1)
    # every device visible (Ray told not to set it): the physical id
    assert trial_device(1, ["2"], None) == torch.device("cuda", 2)
    assert trial_device(1, ["2"], "") == torch.device("cuda", 2)
    # no Ray: one process per GPU by local rank
    assert trial_device(1, [], None, local_rank=3) == torch.device("cuda", 3)
    with pytest.raises(RuntimeError, match="hides it"):
        trial_device(1, ["1"], "0")


def test_loader_workers_and_prefetch_sized_from_cpus():
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert loader_workers(-1, 8, cuda) == 7 and loader_workers(-1, 1, cuda) == 1
    assert loader_workers(-1, 8, cpu) == 0                       # CPU runs are unchanged
    assert loader_workers(3, 8, cpu) == 3 and loader_workers(0, 8, cuda) == 0
    assert prefetch_factor(0) is None
    assert prefetch_factor(1) == 4 and prefetch_factor(7) == 2   # about 4 batches in flight


def test_actor_runner_with_two_workers_is_bad_input(capsys, tmp_path, monkeypatch):
    from search.bench.tiny_data import write_tiny_spec
    from search.run import main
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)
    spec = write_tiny_spec(tmp_path / "spec", per_class=2)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(["--method", "ft", "--space", "spaces/ft.yaml", "--data", str(spec), "--model",
              "micro-clip-16", "--pretrained", "", "--workers-per-trial", "2",
              "--trial-runner", "actor", "--output", str(out)])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert exc.value.code == 2 and len(err) == 1 and "worker-group" in err[0], err
    assert not out.exists()


def test_worker_group_flag_is_an_alias():
    from search.cli import build_parser
    parse = build_parser().parse_args
    assert parse(["--method", "ft"]).trial_runner == "auto"
    assert parse(["--method", "ft", "--worker-group"]).trial_runner == "worker-group"
    assert parse(["--method", "ft", "--trial-runner", "actor"]).trial_runner == "actor"


@pytest.mark.slow
def test_fractional_gpu_trials_share_a_logical_gpu(tmp_path):
    """Two trials planned in the actor with 0.5 GPU each run at once on one logical GPU, both
    given GPU "0", and the trial's device selection (``RaySession``) names ``cuda:0``. A worker
    group on a GPU needs CUDA in its workers and cannot run here; its plan is tested above."""
    import ray
    from ray import tune

    from search.tune.session import RaySession

    setup = _setup(gpus_per_worker=0.5, cpus_per_worker=1, trial_runner="actor")
    plan = setup.plan

    def trial(config):
        session = RaySession(plan.in_actor, setup.gpus_per_worker)
        start = time.time()
        time.sleep(3)
        tune.report({"device": str(session.device), "start": start, "end": time.time(),
                     "ids": ",".join(ray.get_runtime_context().get_accelerator_ids()["GPU"])})

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    try:
        grid = tune.Tuner(tune.with_resources(trial, plan.actor_resources),
                          param_space={"i": tune.grid_search([0, 1])},
                          run_config=tune.RunConfig(storage_path=str(tmp_path), name="frac",
                                                    verbose=0)).fit()
    finally:
        ray.shutdown()
    results = [r.metrics for r in grid]
    assert all(r.error is None for r in grid)
    assert [m["device"] for m in results] == ["cuda:0", "cuda:0"]
    assert [m["ids"] for m in results] == ["0", "0"]
    first, second = sorted(results, key=lambda m: m["start"])
    assert second["start"] < first["end"]          # both held half the GPU at the same time
