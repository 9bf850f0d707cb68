"""One evaluation run computed by N processes: every N-th (seed, arm) from the K-th.

``scripts/evaluate.py ... --shard K/N`` (or ``--shard auto`` under torchrun, srun or a
SLURM job array) joins the run all N shards share (:class:`astrocurate.tracking.SharedRun`,
the same reuse key as a run without shards), pretrains and scores its share of the
(seed, arm) pairs on its own device (``cuda:LOCAL_RANK`` under torchrun), and the shard
that finds every pair scored completes the run: the scores table, the metrics, the report.
A killed shard leaves its finished pairs and its last checkpoint; running it again resumes.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import torch

from astrocurate.algorithms.kmeans.rows import resolve_device
from astrocurate.stages.evaluation.arms import arm_context, score_arm_seed, seed_directory
from astrocurate.stages.evaluation.outputs import SEED_SCORES
from astrocurate.stages.evaluation.plan import RESUME_PARAMS, STEP, VOLATILE_PARAMS, Plan
from astrocurate.stages.evaluation.results import complete, prepare_outputs
from astrocurate.tracking import SharedRun, StepRun, get_run, run_key

log = logging.getLogger(__name__)


def shared_run(plan: Plan) -> SharedRun:
    """Return the run every shard of ``plan`` shares (the key of a run without shards)."""
    params = {k: v for k, v in plan.params.items() if k not in VOLATILE_PARAMS}
    key = run_key(STEP, params, [plan.sampling.run_id])
    return SharedRun(STEP, key, plan.root, command="evaluate")


def shard_device(name: str) -> torch.device:
    """Return the device of this shard: ``cuda:LOCAL_RANK`` under torchrun with CUDA."""
    device = resolve_device(name)
    local = os.environ.get("LOCAL_RANK", "").strip()
    if device.type == "cuda" and name in ("auto", "cuda") and local.isdigit():
        return torch.device("cuda", int(local) % torch.cuda.device_count())
    return device


def evaluate_shard(plan: Plan, shard: tuple[int, int], *, report: bool = True) -> StepRun:
    """Compute shard ``(K, N)`` of an evaluation; complete the run if it was the last.

    Returns
    -------
    StepRun
        The shared run (``reused`` when it was already finished).
    """
    k, n = shard
    shared = shared_run(plan)
    shared.prepare_root([plan.sampling.run_id])
    with shared.lease():
        params = plan.params | plan.resolved_params()
        run = shared.join(params, [plan.sampling.run_id], resume_params=RESUME_PARAMS)
        if run.reused:
            log.info("shard %d/%d: run %s is already finished", k, n, run.run_id)
            return run
        holder = shared.share(run)
        prepare_outputs(run.output_dir, plan)
    with contextlib.closing(holder), shared.working(run.run_id, f"shard {k}/{n}"):
        context = arm_context(plan, run.output_dir, shard_device(plan.options.device))
        for seed, arm in plan.jobs()[k::n]:
            score_arm_seed(context, arm, seed, plan.folds(seed))
        with shared.lease():
            _complete_if_done(shared, run, plan, report)
    return run


def _complete_if_done(shared: SharedRun, run: StepRun, plan: Plan, report: bool) -> Any:
    """Complete the run when every (seed, arm) is scored (call under the lease)."""
    record = get_run(run.run_id)
    if record.finished:
        return
    missing = [
        (seed, arm.name)
        for seed, arm in plan.jobs()
        if not (seed_directory(Path(run.output_dir), arm.name, seed) / SEED_SCORES).is_file()
    ]
    if missing:
        log.info("run %s: %d (seed, arm) pairs left to other shards", run.run_id, len(missing))
        return
    shared.finish(record, lambda handle: complete(handle, plan, report))
