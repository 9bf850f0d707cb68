"""Step 3: a feature vector per cutout (run name ``feature_extraction``).

The output directory holds::

    features.npy     float32 (or float16) N x D, row i = merged cutout i, memory-mappable
    features.json    model, weights hash, layer, preprocessing, dimension, dtype

This module plans a run and records it as one MLflow run (:func:`extract_features`);
the work, in resumable blocks of rows, is :mod:`~astrocurate.stages.feature_extraction.extraction`.
Several processes can share one run: ``--shard K/N`` (or ``--shard auto`` in a SLURM
job array or under torchrun) computes a contiguous range of the blocks, in the same run
and the same matrix as every other shard (:mod:`astrocurate.stages.feature_extraction.shards`).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from astrocurate.errors import InvalidArgumentError
from astrocurate.stages.feature_extraction.outputs import FEATURES, SIDECAR, load_features
from astrocurate.stages.feature_extraction.plan import (
    DEFAULT_MODEL,
    PROGRESS_DIR,
    RESUME_PARAMS,
    STEP,
    VOLATILE_PARAMS,
    Extraction,
    FeatureOptions,
    default_workers,
    plan_extraction,
)
from astrocurate.tracking import StepRun, tracked_step

__all__ = [
    "DEFAULT_MODEL",
    "FEATURES",
    "PROGRESS_DIR",
    "RESUME_PARAMS",
    "SIDECAR",
    "STEP",
    "VOLATILE_PARAMS",
    "Extraction",
    "FeatureOptions",
    "default_workers",
    "extract_features",
    "load_features",
    "plan_extraction",
]

log = logging.getLogger(__name__)


def extract_features(
    merged_cutouts_id: str,
    options: FeatureOptions | None = None,
    *,
    batch_size: int = 128,
    workers: int | None = None,
    device: str = "auto",
    output_path: Path | None = None,
    force: bool = False,
    progress: bool | None = None,
    shard: tuple[int, int] | None = None,
) -> StepRun:
    """Compute features for every cutout of a merge run; record one ``feature_extraction`` run.

    Parameters
    ----------
    merged_cutouts_id : str
        ID of a finished ``merge_cutouts`` run.
    options : FeatureOptions, optional
        Model and preprocessing; default the offline scattering backbone.
    batch_size : int
        Cutouts per forward pass. It can change the features at float rounding (timm CNNs
        on the CPU), so an unfinished run resumes only with its own (:data:`RESUME_PARAMS`).
    workers : int, optional
        Threads reading the cutouts ahead of the model; default :func:`default_workers`.
    device : str
        ``auto``, ``cpu`` or ``cuda``.
    output_path : Path, optional
        Parent directory of the run directory; default the merge run's.
    force : bool
        Recompute even if an identical finished run exists (not with ``shard``).
    progress : bool, optional
        Progress bar; default only on a terminal.
    shard : tuple of int, optional
        ``(K, N)``: compute only shard K of N of the blocks, in the run that every shard
        shares (:func:`astrocurate.stages.feature_extraction.shards.extract_shard`); the run is
        finished by
        the shard that completes the last block.

    Returns
    -------
    StepRun
    """
    if shard is not None and force:
        raise InvalidArgumentError(
            "--force: not with --shard (every shard must find the same run); "
            "use a new --output_path or MLflow experiment to recompute"
        )
    plan = plan_extraction(
        merged_cutouts_id,
        options,
        batch_size=batch_size,
        workers=workers,
        device=device,
        output_path=output_path,
    )
    if shard is not None:
        from astrocurate.stages.feature_extraction.shards import extract_shard

        return extract_shard(plan, shard, progress=_show_progress(progress)).run
    return _extract_in_one_run(plan, force=force, progress=_show_progress(progress))


def _extract_in_one_run(plan: Extraction, *, force: bool, progress: bool) -> StepRun:
    """Compute every block of ``plan`` in this process, recorded as one tracked run.

    A finished run is reused before the device is resolved or torch imported.
    """
    with tracked_step(
        STEP,
        plan.key_params,
        input_run_ids=[plan.merged.run_id],
        output_root=plan.root,
        volatile_params=VOLATILE_PARAMS,
        resume_params=RESUME_PARAMS,
        force=force,
        before_work=plan.device_params,
    ) as run:
        if run.reused:
            return run
        from astrocurate.stages.feature_extraction.extraction import (
            compute_blocks,
            finalise,
            log_quality,
            prepare_output,
        )

        started = time.perf_counter()
        computed = 0
        if prepare_output(plan, run.output_dir):
            computed = compute_blocks(plan, run.output_dir, plan.block_starts, progress)
        seconds = time.perf_counter() - started
        finalise(run.output_dir)
        run.log_metrics(
            {
                "n_features": plan.n_rows,
                "feature_dim": plan.card.dim,
                "images_per_second": computed / seconds if seconds > 0 else 0.0,
            }
        )
        log_quality(run, plan.merged.output_dir)
    return run


def _show_progress(progress: bool | None) -> bool:
    return sys.stderr.isatty() if progress is None else progress
