"""Step 6: does the curated sample train a better model? (MLflow run ``evaluation``).

``python scripts/evaluate.py --sampling-id ID`` pretrains the same self-supervised
encoder (:mod:`astrocurate.algorithms.ssl`: SimCLR or BYOL through lightly, a ResNet-18,
radio augmentations) on the arms of a sampling run, with the same seed, augmentations and
budget of images seen:

- ``curated``: the curated sample (``selected.npy``);
- ``random``: its uniform baseline of the same size (``baseline_random.npy``);
- ``pool`` (``--arms curated random pool``): a uniform draw of ``min(pool, images seen)``
  cutouts of the whole pool, each seen once, which is what pretraining on the whole pool
  sees within the budget;
- ``weights_<name>`` (``--weights FILE``): an encoder trained elsewhere, not retrained.

Each frozen encoder then embeds the labelled cutouts (:mod:`.labelled`) and a kNN and a
linear probe are cross-validated on folds that never share sky between train and test
(:func:`astrocurate.algorithms.probes.sky_folds`). Every seed ``s`` pretrains with seed
``s`` and scores on folds drawn with seed ``s``; the run reports the mean and the spread
(sample standard deviation) over seeds of the balanced accuracy and of each category's
recall (:mod:`astrocurate.stages.evaluation.outputs` lists the files).

The work is checked and planned in :mod:`.plan`, one (seed, arm) at a time done in
:mod:`.arms`, gathered in :mod:`.results`; ``--shard K/N`` (or ``auto`` under torchrun,
srun or a SLURM array) shares the (seed, arm) pairs between N processes (:mod:`.shards`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from astrocurate.stages.evaluation.plan import (
    RESUME_PARAMS,
    STEP,
    VOLATILE_PARAMS,
    EvaluationOptions,
    Plan,
    plan_evaluation,
)
from astrocurate.tracking import StepRun, require_run, tracked_step

__all__ = ["EvaluationOptions", "evaluate", "regenerate_report"]

log = logging.getLogger(__name__)


def evaluate(
    sampling_id: str,
    options: EvaluationOptions,
    *,
    labels: Path | None = None,
    weights: tuple[Path, ...] = (),
    output_path: Path | None = None,
    force: bool = False,
    report: bool = True,
    shard: tuple[int, int] | None = None,
) -> StepRun:
    """Pretrain and score every arm of a finished sampling run; record one ``evaluation`` run.

    Parameters
    ----------
    sampling_id : str
        ID of a finished ``curated_sampling`` run (with its random baseline).
    options : EvaluationOptions
    labels : Path, optional
        A label file (:mod:`astrocurate.io.label_files`); default the survey's truth
        catalogue.
    weights : tuple of Path
        Encoders trained elsewhere, each scored as an arm ``weights_<stem>``.
    output_path : Path, optional
        Parent of the run directory; default the sampling run's.
    force : bool
        Recompute even if an identical finished run exists (not with ``shard``).
    report : bool
        Write the HTML report.
    shard : tuple of int, optional
        ``(K, N)``: compute every N-th (seed, arm) from the K-th, in the run all N shards
        share (:mod:`astrocurate.stages.evaluation.shards`); the last to finish completes it.

    Raises
    ------
    InvalidArgumentError
        For a bad option, a label file that points at no cutout, weights of another
        architecture (each in one line naming the option or file).
    RunNotFoundError, InvalidRunError
        For a sampling ID that is unknown, unfinished, of another step, or without baseline.
    """
    plan = plan_evaluation(
        sampling_id, options, labels=labels, weights=weights, output_path=output_path
    )
    if shard is not None:
        from astrocurate.stages.evaluation.shards import evaluate_shard

        plan.prepare()
        return evaluate_shard(plan, shard, report=report)
    with tracked_step(
        STEP,
        plan.params,
        input_run_ids=[plan.sampling.run_id],
        output_root=plan.root,
        volatile_params=VOLATILE_PARAMS,
        resume_params=RESUME_PARAMS,
        force=force,
        before_work=plan.prepare,  # a finished run is reused without torch
    ) as run:
        if run.reused:
            return run
        _score_every_arm(run, plan, report)
    return run


def _score_every_arm(run: StepRun, plan: Plan, report: bool) -> None:
    """Pretrain and score every (seed, arm) of ``plan`` in ``run``, then complete it."""
    from astrocurate.stages.evaluation.arms import arm_context, score_arm_seed
    from astrocurate.stages.evaluation.results import complete, prepare_outputs

    run.remove_temporaries()
    prepare_outputs(run.output_dir, plan)
    context = arm_context(plan, run.output_dir, plan.device)
    for seed, arm in plan.jobs():
        score_arm_seed(context, arm, seed, plan.folds(seed))
    complete(run, plan, report)


def regenerate_report(run_id: str) -> Path:
    """Rewrite the report of a finished evaluation run; return its path."""
    from astrocurate.stages.evaluation.results import write_report_artifacts

    record = require_run(run_id, STEP, "RUN_ID")
    return write_report_artifacts(StepRun(record.run_id, STEP, record.output_dir))
