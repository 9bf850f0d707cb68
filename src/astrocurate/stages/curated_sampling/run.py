"""Step 5: balanced curated sample of a clustering run (MLflow run ``curated_sampling``).

``python scripts/random_sampling.py --clustering-id ID --num-samples 10000`` draws a
balanced hierarchical sample (:func:`astrocurate.algorithms.sampling.balanced_sample`) from the pool
the clustering run clustered, and writes one run directory::

    selected.npy          int64 (m,): sorted merged-manifest rows (= feature rows =
                          merged ``cutout_id``) of the curated sample
    baseline_random.npy   int64 (m,): a uniform random sample of the same size and seed,
                          the baseline every metric is compared with
    curated.parquet       the merged manifest's rows of the sample, plus ``cluster_l1`` ..
                          ``cluster_lL`` (cluster at each level) and ``truth_class`` when
                          the survey has a truth catalogue
    metrics.json          the metrics logged to the run (balance per level, classes)
    near_duplicates.parquet, outliers.parquet
                          with ``--dedup-threshold`` / ``--outliers``: what quality curation
                          found (:mod:`astrocurate.stages.curated_sampling.quality`)
    sampling.json         parameters and the directories of the clustering, feature and
                          merge runs it came from
    export/               the curated pixels (``--export``; :mod:`astrocurate.io.export`)
    report/index.html     the curation report (:mod:`astrocurate.stages.curated_sampling.report`)

``m = min(num_samples, pool)``. With ``baseline="random"`` the selection *is* the uniform
sample, through the same outputs, so the two can be compared downstream (training).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from astrocurate import steps
from astrocurate.algorithms import sampling
from astrocurate.errors import InvalidArgumentError, InvalidRunError
from astrocurate.io.atomic import save_npy, write_json
from astrocurate.io.cutout_store import (
    MOSAICS,
    CutoutReader,
    read_manifest_rows,
    write_parquet_atomic,
)
from astrocurate.stages.curated_sampling import quality, steering
from astrocurate.stages.curated_sampling.outputs import (
    BASELINE,
    CURATED,
    EXPORT_DIR,
    INFO,
    METRICS,
    REPORT_DIR,
    SELECTED,
)
from astrocurate.tracking import StepRun, require_run, tracked_step
from astrocurate.validation import check_choice, check_real

log = logging.getLogger(__name__)

STEP = steps.CURATED_SAMPLING
STRATEGIES = ("r", "c", "f")
BASELINES = ("none", "random")
OUTLIER_MODES = ("none", "list", "exclude", "include")


@dataclass(frozen=True)
class SamplingOptions:
    """What to sample and how.

    Attributes
    ----------
    num_samples : int
        Budget, >= 1; more than the pool gives the whole pool (with a warning).
    strategy : {'r', 'c', 'f'}
        Inside a level-1 cluster: uniform (default), closest to, or farthest from the centroid.
    level : int, optional
        1-based level whose clusters the budget is first split over; default the top level.
    baseline : {'none', 'random'}
        ``'random'`` replaces the balanced sample by a uniform one of the same size.
    seed : int
        Seed of the remainder rule, strategy ``'r'`` and the random baseline.
    export : tuple of str
        Formats of :data:`astrocurate.io.export.EXPORT_FORMATS` to write the pixels in.
    dedup_threshold : float, optional
        Leave out semantic near-duplicates: inside each level-1 cluster, cutouts whose
        features have a cosine similarity of at least this (in (0, 1]) to a cutout of higher
        peak SNR (:mod:`astrocurate.algorithms.duplicates`). Default: keep every cutout.
    outliers : {'none', 'list', 'exclude', 'include'}
        Score every pool cutout with an isolation forest on its features
        (:mod:`astrocurate.algorithms.outliers`) and take the ``outlier_share`` highest as
        outliers: ``list`` them only, ``exclude`` them from the sample, or ``include`` them
        all in it (the rest of the budget balanced as usual). ``none``: no scores.
    outlier_share : float
        Share of the pool called outliers, in (0, 0.5].
    min_peak_snr : float, optional
        Leave out empty sky: cutouts whose peak stands less than this many noise sigma
        above their median, against the mosaic's rms map where the cutout has one
        (``peak_snr_map``), else its own robust noise (``peak_snr``). Default: keep them.
    max_noise_ratio : float, optional
        Leave out too-noisy cutouts: noise (rms map, else robust noise) above this many
        times the median of the pool's cutouts of the same mosaic and window size, > 1.
        Default: keep them.
    steer_by : str, optional
        Balance over this source-catalogue column inside every level-1 cluster
        (:mod:`.steering`: ``max_size_arcsec``, ``max_flux_jy``, ``n_sources``, ``s_code``).
    steer_bins : str
        Bins of ``steer_by``: a number of quantile bins (default ``"4"``) or increasing
        edges ``"10,30,60"``; ``s_code`` takes its codes.
    """

    num_samples: int
    strategy: str = "r"
    level: int | None = None
    baseline: str = "none"
    seed: int = 0
    export: tuple[str, ...] = field(default_factory=tuple)
    dedup_threshold: float | None = None
    outliers: str = "none"
    outlier_share: float = 0.01
    min_peak_snr: float | None = None
    max_noise_ratio: float | None = None
    steer_by: str | None = None
    steer_bins: str = "4"

    def validate(self) -> SamplingOptions:
        """Return a copy with the export formats in canonical order; refuse bad values."""
        from astrocurate.io.export import check_formats

        if not _is_int(self.num_samples) or self.num_samples < 1:
            raise InvalidArgumentError(
                f"--num-samples: expected a whole number >= 1, got {self.num_samples!r}"
            )
        if self.strategy not in STRATEGIES:
            raise InvalidArgumentError(
                f"--strategy: expected one of {', '.join(STRATEGIES)}, got {self.strategy!r}"
            )
        if self.level is not None and (not _is_int(self.level) or self.level < 1):
            raise InvalidArgumentError(f"--level: expected a level >= 1, got {self.level!r}")
        if self.baseline not in BASELINES:
            raise InvalidArgumentError(
                f"--baseline: expected one of {', '.join(BASELINES)}, got {self.baseline!r}"
            )
        if not _is_int(self.seed) or self.seed < 0:
            raise InvalidArgumentError(f"--seed: expected a whole number >= 0, got {self.seed!r}")
        if self.dedup_threshold is not None:
            check_real("--dedup-threshold", self.dedup_threshold, 0.0, 1.0, high_open=False)
        check_choice("--outliers", self.outliers, OUTLIER_MODES)
        check_real("--outlier-share", self.outlier_share, 0.0, 0.5, high_open=False)
        if self.min_peak_snr is not None:
            check_real("--min-peak-snr", self.min_peak_snr, 0.0)
        if self.max_noise_ratio is not None:
            check_real("--max-noise-ratio", self.max_noise_ratio, 1.0)
        if self.steer_by is not None:
            check_choice("--steer-by", self.steer_by, steering.STEERABLE)
            steering.parse_bins(self.steer_bins)
        return SamplingOptions(**{**asdict(self), "export": check_formats(self.export)})


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


@dataclass(frozen=True)
class _Inputs:
    """The runs a sample is drawn from and the clustering's arrays."""

    clustering_id: str
    clustering_dir: Path
    features_dir: Path
    merged_dir: Path
    clustering: Any  # ClusteringOutputs

    @property
    def n_levels(self) -> int:
        return len(self.clustering.levels)

    @property
    def pool_size(self) -> int:
        return len(self.clustering.input_indices)

    @property
    def rows(self) -> np.ndarray:
        """Feature row (= merged cutout row) of every pool point."""
        return np.asarray(self.clustering.input_indices, dtype=np.int64)

    def point_labels(self) -> list[np.ndarray]:
        """Cluster of every pool point, per level (index 0 = level 1)."""
        return [np.asarray(level["point_labels"])[self.rows] for level in self.clustering.levels]

    def level_one_distances(self) -> np.ndarray:
        """Squared distance of every pool point to its level-1 centroid."""
        level = self.clustering.levels[0]
        distances = np.empty(self.pool_size, dtype=np.float64)
        distances[np.asarray(level["members"])] = np.asarray(level["distances"])
        return distances


def _resolve_inputs(clustering_id: str) -> _Inputs:
    """Check the clustering run and follow its lineage to the features and the merge."""
    from astrocurate.stages.clustering.outputs import (
        RUN_FILE,
        load_clustering,
        require_clustering_run,
    )

    record = require_clustering_run(clustering_id)
    directory = record.output_dir
    info = json.loads((directory / RUN_FILE).read_text())
    features = require_run(info["features_id"], "feature_extraction", "features of this run")
    merged_ids = features.input_run_ids
    if len(merged_ids) != 1:
        raise InvalidRunError(
            f"feature run {features.run_id} records {len(merged_ids)} input runs, expected "
            "its one merge_cutouts run"
        )
    merged = require_run(merged_ids[0], "merge_cutouts", "cutouts of this run")
    return _Inputs(
        record.run_id, directory, features.output_dir, merged.output_dir, load_clustering(directory)
    )


def curated_sample(
    clustering_id: str,
    options: SamplingOptions,
    *,
    output_path: Path | None = None,
    force: bool = False,
    report: bool = True,
) -> StepRun:
    """Draw a curated sample from a finished clustering run; record one ``curated_sampling`` run.

    Parameters
    ----------
    clustering_id : str
        ID of a finished ``clustering`` run.
    options : SamplingOptions
        Budget, strategy, level, baseline, seed and export formats.
    output_path : Path, optional
        Parent of the run directory; default the clustering run's.
    force : bool
        Recompute even if an identical finished run exists.
    report : bool
        Write the HTML report and log it as artifacts.

    Returns
    -------
    StepRun

    Raises
    ------
    InvalidArgumentError
        For a bad option (naming it).
    RunNotFoundError, InvalidRunError
        For a clustering ID that is unknown, of another step, unfinished or failed.
    """
    options = options.validate()
    inputs = _resolve_inputs(clustering_id)
    level = options.level or inputs.n_levels
    if level > inputs.n_levels:
        raise InvalidArgumentError(
            f"--level={level}: clustering run {inputs.clustering_id} has levels 1 to "
            f"{inputs.n_levels}"
        )
    if options.num_samples > inputs.pool_size:
        log.warning(
            "--num-samples %d is more than the %d cutouts clustered: taking all of them",
            options.num_samples,
            inputs.pool_size,
        )
    root = Path(output_path).resolve() if output_path else inputs.clustering_dir.parent.parent
    params = {**asdict(options), "level": level, "export": ",".join(options.export) or "none"}
    if options.dedup_threshold is None:  # the parameters (and run key) of earlier versions
        params.pop("dedup_threshold")
    if options.outliers == "none":
        params.pop("outliers")
        params.pop("outlier_share")
    for name in ("min_peak_snr", "max_noise_ratio"):
        if params[name] is None:
            params.pop(name)
    steered = None
    if options.steer_by is None:
        del params["steer_by"], params["steer_bins"]
    else:
        bins = steering.parse_bins(options.steer_bins)
        steered = steering.steer(inputs.merged_dir, inputs.rows, options.steer_by, bins)
    params.pop("seed")
    params["output_path"] = str(root)
    with tracked_step(
        STEP,
        params,
        input_run_ids=[inputs.clustering_id],
        seed=options.seed,
        output_root=root,
        force=force,
    ) as run:
        if run.reused:
            return run
        _write_sample(run, inputs, options, level, steered)
        if report:
            _write_report(run)
    return run


def _write_sample(
    run: StepRun,
    inputs: _Inputs,
    options: SamplingOptions,
    level: int,
    steered: steering.Steering | None,
) -> None:
    """Select, describe, measure and export the sample into ``run.output_dir``."""
    out = run.output_dir
    run.remove_temporaries()
    curated_rng, baseline_rng = np.random.SeedSequence(options.seed).spawn(2)
    labels = inputs.point_labels()
    baseline = sampling.random_sample(inputs.pool_size, options.num_samples, baseline_rng)
    checks = _quality_checks(inputs, options)
    if options.baseline == "random":
        chosen = baseline
    else:
        distances = inputs.level_one_distances() if options.strategy != "r" else None
        chosen = quality.select(
            labels if steered is None else steered.levels(labels),
            options.num_samples,
            strategy=options.strategy,
            distances=distances,
            level=level - 1 if steered is None else level,
            random_state=np.random.default_rng(curated_rng),
            eligible=checks.eligible(inputs.pool_size, options.outliers == "exclude"),
            forced=checks.forced(options.outliers == "include"),
        )
    if len(chosen) < min(options.num_samples, inputs.pool_size):
        log.warning(
            "only %d cutouts are left to sample after quality curation (%d asked): lower "
            "--outlier-share or --min-peak-snr, or raise --dedup-threshold or "
            "--max-noise-ratio, for more",
            len(chosen),
            options.num_samples,
        )
    rows = inputs.rows
    truth = pool_truth_classes(inputs.merged_dir, rows)
    curated = _curated_manifest(inputs.merged_dir, rows[chosen], labels, chosen, truth)
    metrics = sample_metrics(labels, chosen, baseline, truth)
    metrics.update(checks.write(out, rows, labels[0], chosen, baseline, truth))
    if steered is not None:
        metrics.update(steered.metrics(chosen, baseline))
    if checks.outliers is not None:
        curated["outlier_score"] = checks.outliers.scores[chosen]
    save_npy(out / SELECTED, rows[chosen])
    save_npy(out / BASELINE, rows[baseline])
    write_parquet_atomic(curated, out / CURATED)
    write_json(out / METRICS, metrics)
    write_json(out / INFO, _info(inputs, options, level))
    if options.export:
        _export(out / EXPORT_DIR, curated, inputs.merged_dir, options.export)
    run.log_metrics({**metrics, "n_selected": len(chosen), "pool_size": inputs.pool_size})
    run.log_artifact(out / METRICS)
    log.info(
        "selected %d of %d cutouts (%s) into %s",
        len(chosen),
        inputs.pool_size,
        "uniform baseline" if options.baseline == "random" else f"strategy {options.strategy}",
        out,
    )


def _quality_checks(inputs: _Inputs, options: SamplingOptions) -> quality.QualityChecks:
    """Near-duplicates and outliers of the pool, as the options ask."""
    duplicates = outliers = None
    if options.dedup_threshold is not None:
        duplicates = quality.find_near_duplicates(
            inputs.features_dir,
            inputs.merged_dir,
            inputs.rows,
            inputs.point_labels()[0],
            options.dedup_threshold,
        )
    if options.outliers != "none":
        outliers = quality.find_outliers(
            inputs.features_dir, inputs.rows, options.outlier_share, options.seed
        )
    noise = None
    if options.min_peak_snr is not None or options.max_noise_ratio is not None:
        noise = quality.find_noise_flags(
            inputs.merged_dir, inputs.rows, options.min_peak_snr, options.max_noise_ratio
        )
    return quality.QualityChecks(duplicates, outliers, noise)


def pool_truth_classes(merged_dir: Path, rows: np.ndarray) -> np.ndarray | None:
    """Truth class of every pool cutout, or None when the survey has no truth catalogue.

    Only the mosaics table is read to look for a catalogue, so a real survey (which has
    none) costs nothing here.
    """
    from astrocurate.io.labels import find_truth_catalogue, label_cutouts

    mosaics_path = merged_dir / MOSAICS
    if not mosaics_path.is_file():
        return None
    paths = pd.read_parquet(mosaics_path, columns=["mosaic_path"])["mosaic_path"]
    catalogue = find_truth_catalogue(paths.astype(str).tolist())
    if catalogue is None:
        return None
    table = read_manifest_rows(merged_dir, rows, ("mosaic_path", "window_size", "x0", "y0"))
    return label_cutouts(table, catalogue)


def _curated_manifest(
    merged_dir: Path,
    selected_rows: np.ndarray,
    labels: Sequence[np.ndarray],
    chosen: np.ndarray,
    truth: np.ndarray | None,
) -> pd.DataFrame:
    """Return the merged manifest's rows of the sample with their clusters (and truth class)."""
    curated = read_manifest_rows(merged_dir, selected_rows)
    for lvl, level_labels in enumerate(labels, start=1):
        curated[f"cluster_l{lvl}"] = level_labels[chosen].astype(np.int64)
    if truth is not None:
        curated["truth_class"] = truth[chosen]
    return curated


def sample_metrics(
    labels: Sequence[np.ndarray],
    chosen: np.ndarray,
    baseline: np.ndarray,
    truth: np.ndarray | None = None,
) -> dict[str, float]:
    """Balance of a sample next to the pool and a random sample of the same size.

    Parameters
    ----------
    labels : sequence of ndarray of int, each (n,)
        Cluster of every pool point per level (index 0 = level 1).
    chosen, baseline : ndarray of int
        Pool positions of the curated sample and of the random baseline.
    truth : ndarray of str, shape (n,), optional
        Truth class of every pool point.

    Returns
    -------
    dict of str to float
        Per level ``L``: ``level_L_entropy_{pool,curated,random}`` (normalised entropy of
        the cluster histogram over the pool's clusters) and
        ``level_L_largest_share_{pool,curated,random}``. With ``truth``:
        ``class_entropy_*``, ``class_share_<class>_*`` and ``class_enrichment_<class>``
        (curated share over pool share) and ``class_enrichment_random_<class>``.
    """
    metrics: dict[str, float] = {}
    for lvl, level_labels in enumerate(labels, start=1):
        metrics.update(_balance(f"level_{lvl}", level_labels, chosen, baseline))
    if truth is not None:
        metrics.update(_balance("class", truth, chosen, baseline))
        names, pool_counts, _ = sampling.aligned_counts(truth, truth[chosen])
        shares = {"pool": pool_counts / pool_counts.sum()}
        for kind, positions in (("curated", chosen), ("random", baseline)):
            _, _, counts = sampling.aligned_counts(truth, truth[positions])
            shares[kind] = counts / counts.sum()
        for i, name in enumerate(names):
            for kind, share in shares.items():
                metrics[f"class_share_{name}_{kind}"] = float(share[i])
            metrics[f"class_enrichment_{name}"] = float(shares["curated"][i] / shares["pool"][i])
            metrics[f"class_enrichment_random_{name}"] = float(
                shares["random"][i] / shares["pool"][i]
            )
    return metrics


def _balance(
    prefix: str, categories: np.ndarray, chosen: np.ndarray, baseline: np.ndarray
) -> dict[str, float]:
    """Normalised entropy and largest share of the pool, the sample and the baseline."""
    if categories.dtype.kind in "iu":  # cluster labels: count by bincount, over the pool's
        pool_counts = np.bincount(categories)
        present = pool_counts > 0
        k = pool_counts.size
        counts = {
            "pool": pool_counts[present],
            "curated": np.bincount(categories[chosen], minlength=k)[present],
            "random": np.bincount(categories[baseline], minlength=k)[present],
        }
    else:
        _, pool_counts, curated_counts = sampling.aligned_counts(categories, categories[chosen])
        _, _, random_counts = sampling.aligned_counts(categories, categories[baseline])
        counts = {"pool": pool_counts, "curated": curated_counts, "random": random_counts}
    values = {}
    for kind, histogram in counts.items():
        values[f"{prefix}_entropy_{kind}"] = sampling.normalized_entropy(histogram)
        values[f"{prefix}_largest_share_{kind}"] = sampling.largest_share(histogram)
    return values


def _info(inputs: _Inputs, options: SamplingOptions, level: int) -> dict[str, Any]:
    return {
        "clustering_run_id": inputs.clustering_id,
        "clustering_dir": str(inputs.clustering_dir),
        "features_dir": str(inputs.features_dir),
        "merged_dir": str(inputs.merged_dir),
        "num_samples": options.num_samples,
        "strategy": options.strategy,
        "level": level,
        "baseline": options.baseline,
        "seed": options.seed,
        "export": list(options.export),
        "dedup_threshold": options.dedup_threshold,
        "outliers": options.outliers,
        "outlier_share": options.outlier_share,
        "min_peak_snr": options.min_peak_snr,
        "max_noise_ratio": options.max_noise_ratio,
        "steer_by": options.steer_by,
        "steer_bins": options.steer_bins,
        "n_levels": inputs.n_levels,
        "pool_size": inputs.pool_size,
    }


def _export(
    directory: Path, curated: pd.DataFrame, merged_dir: Path, formats: Sequence[str]
) -> None:
    from astrocurate.io.export import export_sample

    mosaics_path = merged_dir / MOSAICS
    mosaics = pd.read_parquet(mosaics_path) if mosaics_path.is_file() else None
    reader = CutoutReader.from_directory(merged_dir)
    written = export_sample(curated, reader, directory, formats, mosaics=mosaics)
    log.info(
        "exported %s into %s", ", ".join(f"{k} ({v} files)" for k, v in written.items()), directory
    )


def regenerate_report(run_id: str) -> Path:
    """Rewrite the report of a finished sampling run and log it again; return its path.

    Parameters
    ----------
    run_id : str
        A finished ``curated_sampling`` run.
    """
    record = require_run(run_id, STEP, "RUN_ID")
    return _write_report(StepRun(record.run_id, STEP, record.output_dir))


def _write_report(run: StepRun) -> Path:
    """Write the HTML report into the run directory and log it as artifacts."""
    from astrocurate.stages.curated_sampling.report import write_report

    page = write_report(run.output_dir)
    run.log_folder(page.parent, REPORT_DIR)
    log.info("report: %s", page)
    return page


def load_sample(directory: Path | str) -> tuple[dict[str, Any], pd.DataFrame]:
    """Read a sampling run directory: its ``sampling.json`` and curated manifest."""
    directory = Path(directory)
    info_path = directory / INFO
    if not info_path.is_file():
        raise InvalidRunError(
            f"{directory} is not a curated_sampling run directory (no {INFO}); "
            "make one with scripts/random_sampling.py"
        )
    return json.loads(info_path.read_text()), pd.read_parquet(directory / CURATED)
