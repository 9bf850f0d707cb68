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
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from astrocurate import steps
from astrocurate.algorithms.kmeans.rows import resolve_device
from astrocurate.cpus import usable_cpus
from astrocurate.errors import InvalidArgumentError
from astrocurate.io.cutout_store import read_manifest
from astrocurate.stages.feature_extraction.extraction import (
    DEFAULT_MODEL,
    PROGRESS_DIR,
    RESUME_PARAMS,
    STEP,
    VOLATILE_PARAMS,
    Extraction,
    FeatureModel,
    FeatureOptions,
    compute_blocks,
    finalise,
    log_quality,
    prepare_output,
)
from astrocurate.stages.feature_extraction.outputs import FEATURES, SIDECAR, load_features
from astrocurate.tracking import StepRun, require_run, tracked_step

__all__ = [
    "DEFAULT_MODEL",
    "FEATURES",
    "PROGRESS_DIR",
    "RESUME_PARAMS",
    "SIDECAR",
    "STEP",
    "VOLATILE_PARAMS",
    "Extraction",
    "FeatureModel",
    "FeatureOptions",
    "default_workers",
    "extract_features",
    "load_features",
    "plan_extraction",
]

log = logging.getLogger(__name__)

SOURCE_STEP = steps.source_of(STEP)


def default_workers(device: torch.device) -> int:
    """Return loader workers that leave the CPU cores to the model on CPU, feed a GPU."""
    cores = usable_cpus()
    if device.type == "cuda":
        return min(8, cores)
    return 0 if cores <= 2 else min(4, cores // 4)


def plan_extraction(
    merged_cutouts_id: str,
    options: FeatureOptions | None = None,
    *,
    batch_size: int = 128,
    workers: int | None = None,
    device: str = "auto",
    output_path: Path | None = None,
) -> Extraction:
    """Check the arguments of a feature run and create its backbone (see :func:`extract_features`).

    Returns
    -------
    Extraction

    Raises
    ------
    InvalidArgumentError, InvalidRunError, RunNotFoundError
        On the first bad option or an unusable merge run, before any run is recorded.
    """
    from astrocurate.algorithms.backbones.registry import create_backbone

    options = options or FeatureOptions()
    options.validate()
    if batch_size < 1:
        raise InvalidArgumentError(f"--batch-size: expected >= 1, got {batch_size}")
    if workers is not None and workers < 0:
        raise InvalidArgumentError(
            f"--workers: expected >= 0 (0: no worker processes), got {workers}"
        )
    merged = require_run(merged_cutouts_id, SOURCE_STEP, "--merged-cutouts-id")
    n_rows = len(read_manifest(merged.output_dir, ["cutout_id"]))
    torch_device = resolve_device(device)
    backbone = create_backbone(
        options.model,
        weights=options.weights,
        arch=options.arch,
        pooling=options.pooling,
        channels=options.channels,
        input_size=options.resize,
    )
    size = options.resize or backbone.preprocessing.input_size
    workers = default_workers(torch_device) if workers is None else workers
    params = _run_params(options, backbone, size, n_rows)
    params.update(
        batch_size=batch_size,
        workers=workers,
        device=str(torch_device),
        device_type=torch_device.type,  # cuda:0 and cuda:1 compute alike
    )
    root = Path(output_path).resolve() if output_path else merged.output_dir.parent.parent
    return Extraction(
        merged, options, backbone, size, n_rows, batch_size, workers, torch_device, params, root
    )


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
        DataLoader worker processes; default :func:`default_workers`.
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
    """Compute every block of ``plan`` in this process, recorded as one tracked run."""
    with tracked_step(
        STEP,
        plan.params,
        input_run_ids=[plan.merged.run_id],
        output_root=plan.root,
        volatile_params=VOLATILE_PARAMS,
        resume_params=RESUME_PARAMS,
        force=force,
    ) as run:
        if run.reused:
            return run
        started = time.perf_counter()
        computed = 0
        if prepare_output(plan, run.output_dir):
            computed = compute_blocks(plan, run.output_dir, plan.block_starts, progress)
        seconds = time.perf_counter() - started
        finalise(run.output_dir)
        run.log_metrics(
            {
                "n_features": plan.n_rows,
                "feature_dim": plan.backbone.dim,
                "images_per_second": computed / seconds if seconds > 0 else 0.0,
            }
        )
        log_quality(run, plan.merged.output_dir)
    return run


def _run_params(options: FeatureOptions, backbone: Any, size: int, n_rows: int) -> dict:
    """Every preprocessing choice as a flat parameter dict."""
    params = {k: v for k, v in asdict(options).items() if k != "normalization"}
    params.update({f"norm_{k}": v for k, v in asdict(options.normalization).items()})
    prep = backbone.preprocessing
    params.update(
        input_size=size,
        model_input_size=prep.input_size,
        in_chans=prep.in_chans,
        model_mean=list(prep.mean),
        model_std=list(prep.std),
        layer=backbone.layer,
        feature_dim=backbone.dim,
        weights_sha256=backbone.weights_sha256 or "none",
        n_rows=n_rows,
    )
    return params


def _show_progress(progress: bool | None) -> bool:
    return sys.stderr.isatty() if progress is None else progress
