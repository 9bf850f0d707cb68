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
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from astrocurate import steps
from astrocurate.algorithms.backbones.weights import sha256
from astrocurate.algorithms.kmeans.rows import resolve_device
from astrocurate.algorithms.probes import primary_strata, sky_folds
from astrocurate.algorithms.ssl import METHODS, AugmentConfig, PretrainConfig, load_encoder
from astrocurate.errors import InvalidArgumentError, InvalidRunError
from astrocurate.io.atomic import write_json
from astrocurate.io.cutout_store import write_parquet_atomic
from astrocurate.stages.curated_sampling.outputs import BASELINE, SELECTED
from astrocurate.stages.curated_sampling.outputs import INFO as SAMPLING_INFO
from astrocurate.stages.evaluation.arms import Arm, ArmContext, score_arm_seed
from astrocurate.stages.evaluation.labelled import LabelledSet, labelled_set, load_pixels
from astrocurate.stages.evaluation.outputs import INFO, LABELS, METRICS, REPORT_DIR, SCORES
from astrocurate.tracking import StepRun, require_run, tracked_step
from astrocurate.validation import check_choice, check_int, check_real

log = logging.getLogger(__name__)

STEP = steps.EVALUATION
ARMS = ("curated", "random", "pool")
PROBES = ("knn", "linear")


@dataclass(frozen=True)
class EvaluationOptions:
    """How to pretrain and score each arm (the same for every arm).

    Attributes
    ----------
    arms : tuple of str
        Arms to pretrain, some of :data:`ARMS` (empty: only ``--weights`` encoders).
    seeds : int
        Number of seeds (0 .. seeds-1), >= 1; the spread is over these.
    method : {'simclr', 'byol'}
    images_seen : int
        Pretraining budget per arm and seed, in images (not epochs).
    batch_size, image_size : int
    learning_rate : float
    max_per_category : int
        At most this many labelled cutouts per category are scored.
    folds : int
        Cross-validation folds of the probes (fewer when the sky has fewer cells).
    knn_k : int
        Neighbours of the kNN probe.
    device : str
        ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
    """

    arms: tuple[str, ...] = ("curated", "random")
    seeds: int = 3
    method: str = "simclr"
    images_seen: int = 50_000
    batch_size: int = 128
    image_size: int = 64
    learning_rate: float = 1e-3
    max_per_category: int = 200
    folds: int = 5
    knn_k: int = 20
    device: str = "auto"

    def validate(self) -> EvaluationOptions:
        """Return a copy with the arms in canonical order; refuse bad values in one line."""
        for arm in self.arms:
            check_choice("--arms", arm, ARMS)
        check_choice("--method", self.method, METHODS)
        check_int("--seeds", self.seeds, 1)
        check_int("--images-seen", self.images_seen, 1)
        check_int("--batch-size", self.batch_size, 2)
        check_int("--image-size", self.image_size, 16)
        check_real("--learning-rate", self.learning_rate, 0.0)
        check_int("--max-per-category", self.max_per_category, 2)
        check_int("--folds", self.folds, 2)
        check_int("--knn-k", self.knn_k, 1)
        arms = tuple(a for a in ARMS if a in self.arms)
        return replace(self, arms=arms)

    def pretrain_config(self, seed: int) -> PretrainConfig:
        """Return the pretraining of every arm for ``seed``."""
        return PretrainConfig(
            method=self.method,
            images_seen=self.images_seen,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            seed=seed,
            augment=AugmentConfig(image_size=self.image_size),
        ).validate()

    def params(self) -> dict[str, Any]:
        """Return the options as MLflow parameters."""
        return {**asdict(self), "arms": ",".join(self.arms) or "none"}


@dataclass(frozen=True)
class _Sampling:
    """The sampling run evaluated and the rows of its arms."""

    run_id: str
    directory: Path
    merged_dir: Path
    curated: np.ndarray
    random: np.ndarray
    pool: np.ndarray


def _resolve_sampling(sampling_id: str) -> _Sampling:
    """Check the sampling run and read its sample, baseline and pool rows."""
    record = require_run(sampling_id, steps.CURATED_SAMPLING, "--sampling-id")
    directory = record.output_dir
    info = json.loads((directory / SAMPLING_INFO).read_text())
    if info.get("baseline") == "random":
        raise InvalidRunError(
            f"--sampling-id: run {record.run_id} was drawn with --baseline random, so it has "
            "no curated arm; evaluate a balanced sampling run"
        )
    if not (directory / BASELINE).is_file():
        raise InvalidRunError(
            f"--sampling-id: run {record.run_id} has no random baseline ({BASELINE}); "
            "rerun scripts/random_sampling.py with this version to write one"
        )
    from astrocurate.stages.clustering.outputs import INPUT_INDICES

    pool = np.load(Path(info["clustering_dir"]) / INPUT_INDICES)
    return _Sampling(
        record.run_id,
        directory,
        Path(info["merged_dir"]),
        np.load(directory / SELECTED),
        np.load(directory / BASELINE),
        np.asarray(pool, dtype=np.int64),
    )


def evaluate(
    sampling_id: str,
    options: EvaluationOptions,
    *,
    labels: Path | None = None,
    weights: tuple[Path, ...] = (),
    output_path: Path | None = None,
    force: bool = False,
    report: bool = True,
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
        Recompute even if an identical finished run exists.
    report : bool
        Write the HTML report.

    Raises
    ------
    InvalidArgumentError
        For a bad option, a label file that points at no cutout, weights of another
        architecture (each in one line naming the option or file).
    RunNotFoundError, InvalidRunError
        For a sampling ID that is unknown, unfinished, of another step, or without baseline.
    """
    options = options.validate()
    device = resolve_device(options.device)
    sampling = _resolve_sampling(sampling_id)
    arms = _arms(sampling, options, weights)
    if not arms:
        raise InvalidArgumentError("--arms: nothing to evaluate; name an arm or pass --weights")
    labelled = labelled_set(sampling.merged_dir, labels, options.max_per_category)
    root = Path(output_path).resolve() if output_path else sampling.directory.parent.parent
    params = {
        **options.params(),
        "labels": labelled.source,
        "labels_sha256": sha256(Path(labels)) if labels else "none",
        "weights": ",".join(f"{a.name}:{sha256(a.weights)}" for a in arms if a.weights) or "none",
        "output_path": str(root),
    }
    with tracked_step(
        STEP,
        params,
        input_run_ids=[sampling.run_id],
        output_root=root,
        volatile_params=("device",),
        resume_params={"device": "--device"},
        force=force,
    ) as run:
        if run.reused:
            return run
        _evaluate(run, sampling, options, arms, labelled, device)
        if report:
            _write_report(run)
    return run


def _arms(sampling: _Sampling, options: EvaluationOptions, weights: tuple[Path, ...]) -> list[Arm]:
    """Return the arms to evaluate; weights files are loaded here, so a bad one fails early."""
    rows = {
        "curated": sampling.curated,
        "random": sampling.random,
        "pool": _pool_draw(sampling, options),
    }
    arms = [Arm(name, rows=rows[name]) for name in options.arms]
    names = set(options.arms)
    for path in weights:
        path = Path(path).expanduser().resolve()
        if not path.is_file():
            raise InvalidArgumentError(f"--weights: no file {str(path)!r}")
        load_encoder(path)  # one-line error for weights of another architecture
        name = f"weights_{path.stem}"
        if name in names:
            raise InvalidArgumentError(f"--weights: two files named {path.stem!r}")
        names.add(name)
        arms.append(Arm(name, weights=path))
    return arms


def _pool_draw(sampling: _Sampling, options: EvaluationOptions) -> np.ndarray:
    """Draw ``min(pool, images seen)`` pool rows uniformly (what the budget can see)."""
    size = min(len(sampling.pool), options.images_seen)
    rng = np.random.default_rng(np.random.SeedSequence([len(sampling.pool), size]))
    return np.sort(rng.choice(sampling.pool, size, replace=False))


def _evaluate(
    run: StepRun,
    sampling: _Sampling,
    options: EvaluationOptions,
    arms: list[Arm],
    labelled: LabelledSet,
    device: Any,
) -> None:
    """Score every arm and seed, then write the scores, the metrics and the info."""
    out = run.output_dir
    run.remove_temporaries()
    write_parquet_atomic(labelled.table, out / LABELS)
    write_json(out / INFO, _info(sampling, options, arms, labelled))
    images, _ = load_pixels(sampling.merged_dir, labelled.rows, options.image_size)
    context = ArmContext(
        directory=out,
        pretrain_config=options.pretrain_config,
        labelled_images=images,
        labels=labelled.labels,
        categories=labelled.categories,
        knn_k=options.knn_k,
        device=device,
        arm_pixels=lambda arm: load_pixels(sampling.merged_dir, arm.rows, options.image_size),
    )
    strata = primary_strata(labelled.labels, labelled.categories)
    table = labelled.table
    records = []
    for seed in range(options.seeds):
        folds = sky_folds(
            table["ra"].to_numpy(),
            table["dec"].to_numpy(),
            labelled.footprint_radius_deg(),
            strata,
            n_folds=options.folds,
            seed=seed,
        )
        for arm in arms:
            scores = score_arm_seed(context, arm, seed, folds)
            records += [
                {"arm": arm.name, "seed": seed, "metric": k, "value": v} for k, v in scores.items()
            ]
    scores = pd.DataFrame.from_records(records, columns=["arm", "seed", "metric", "value"])
    write_parquet_atomic(scores, out / SCORES)
    metrics = summarise(scores, labelled.rarest)
    write_json(out / METRICS, metrics)
    run.log_metrics(metrics)
    run.log_artifact(out / METRICS)


def summarise(scores: pd.DataFrame, rarest: str) -> dict[str, float]:
    """Mean and spread over seeds of every arm's metrics, and curated against random.

    Parameters
    ----------
    scores : DataFrame
        Columns ``arm``, ``seed``, ``metric``, ``value``.
    rarest : str
        The rarest category among the labelled cutouts.

    Returns
    -------
    dict of str to float
        ``<arm>_<metric>_mean`` and ``<arm>_<metric>_std`` (sample standard deviation over
        seeds; 0 with one seed), ``<arm>_<probe>_rarest_recall_{mean,std}``, and with both
        the curated and the random arm ``curated_minus_random_<probe>_balanced_accuracy``,
        ``curated_minus_random_<probe>_rarest_recall`` and ``curated_ahead_<probe>`` (1 when
        the curated mean minus its spread is above the random mean plus its spread, on both
        the balanced accuracy and the rarest category's recall).
    """
    grouped = scores.groupby(["arm", "metric"], sort=True)["value"]
    mean, std = grouped.mean(), grouped.std(ddof=1).fillna(0.0)
    metrics: dict[str, float] = {}
    for (arm, metric), value in mean.items():
        metrics[f"{arm}_{metric}_mean"] = float(value)
        metrics[f"{arm}_{metric}_std"] = float(std[(arm, metric)])
        for probe in PROBES:
            if metric == f"{probe}_recall_{rarest}":
                metrics[f"{arm}_{probe}_rarest_recall_mean"] = float(value)
                metrics[f"{arm}_{probe}_rarest_recall_std"] = float(std[(arm, metric)])
    arms = set(scores["arm"])
    if {"curated", "random"} <= arms:
        for probe in PROBES:
            ahead = True
            for name in (f"{probe}_balanced_accuracy", f"{probe}_rarest_recall"):
                cur, ran = (metrics.get(f"{a}_{name}_mean") for a in ("curated", "random"))
                if cur is None or ran is None:
                    continue
                metrics[f"curated_minus_random_{name}"] = cur - ran
                spread = metrics[f"curated_{name}_std"] + metrics[f"random_{name}_std"]
                ahead = ahead and cur - ran > spread
            metrics[f"curated_ahead_{probe}"] = float(ahead)
    return metrics


def _info(
    sampling: _Sampling, options: EvaluationOptions, arms: list[Arm], labelled: LabelledSet
) -> dict[str, Any]:
    return {
        "sampling_run_id": sampling.run_id,
        "sampling_dir": str(sampling.directory),
        "merged_dir": str(sampling.merged_dir),
        "options": options.params(),
        "pretraining": {k: v for k, v in asdict(options.pretrain_config(0)).items() if k != "seed"},
        "arms": {
            arm.name: {
                "cutouts": None if arm.rows is None else len(arm.rows),
                "weights": None if arm.weights is None else str(arm.weights),
            }
            for arm in arms
        },
        "labels": {
            "source": labelled.source,
            "cutouts": len(labelled.table),
            "unmatched": labelled.unmatched,
            "categories": {
                name: int(labelled.labels[:, i].sum()) for i, name in enumerate(labelled.categories)
            },
            "rarest": labelled.rarest,
        },
    }


def regenerate_report(run_id: str) -> Path:
    """Rewrite the report of a finished evaluation run; return its path."""
    record = require_run(run_id, STEP, "RUN_ID")
    return _write_report(StepRun(record.run_id, STEP, record.output_dir))


def _write_report(run: StepRun) -> Path:
    from astrocurate.stages.evaluation.report import write_report

    page = write_report(run.output_dir)
    for path in sorted(page.parent.iterdir()):
        if path.is_file():
            run.log_artifact(path, REPORT_DIR)
    log.info("evaluation report: %s", page)
    return page
