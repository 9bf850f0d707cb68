"""Step 5, curated sampling: the stage, its outputs, exports, refusals and the Dataset.

Every test samples from the session's small finished pipeline (tests/curation_pipeline.py:
cutouts of 32 and 64 px, stand-in features, a 2-level clustering of 85 % of the rows).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from astrocurate.algorithms import sampling
from astrocurate.dataset import CuratedDataset
from astrocurate.errors import InvalidArgumentError, InvalidRunError, RunNotFoundError
from astrocurate.io.cutout_store import CutoutReader
from astrocurate.stages.clustering.run import ClusteringConfig, prepare_clustering
from astrocurate.stages.curated_sampling.run import (
    BASELINE,
    CURATED,
    INFO,
    METRICS,
    SELECTED,
    SamplingOptions,
    curated_sample,
    sample_metrics,
)
from astrocurate.tracking import client, get_run
from curation_pipeline import CONFIG

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def pipeline(curation_pipeline):
    return curation_pipeline


def sample(pipeline, num_samples: int, **options) -> Path:
    """Sample without a report (the report has its own tests) and return the run directory."""
    force = options.pop("force", False)
    run = curated_sample(
        pipeline.clustering_id,
        SamplingOptions(num_samples, **options),
        force=force,
        report=False,
    )
    return run.output_dir


def clusters(pipeline) -> list[np.ndarray]:
    """Cluster of every feature row per level (-1 outside the pool)."""
    return [pipeline.point_labels(lvl) for lvl in (1, 2)]


def pool_sizes(labels: np.ndarray) -> np.ndarray:
    return np.bincount(labels[labels >= 0])


# --------------------------------------------------------------------------- selection


def test_sample_has_exact_size_distinct_rows_and_cluster_columns(pipeline) -> None:
    out = sample(pipeline, 40)
    selected = np.load(out / SELECTED)
    curated = pd.read_parquet(out / CURATED)
    assert selected.size == 40 and np.unique(selected).size == 40
    assert (np.diff(selected) > 0).all()
    assert curated["cutout_id"].tolist() == selected.tolist()
    labels = clusters(pipeline)
    assert curated["cluster_l1"].tolist() == labels[0][selected].tolist()
    assert curated["cluster_l2"].tolist() == labels[1][selected].tolist()
    manifest = pipeline.manifest.iloc[selected].reset_index(drop=True)
    pd.testing.assert_frame_equal(curated[manifest.columns], manifest)
    assert set(curated["truth_class"]) <= {"empty", "point", "double", "diffuse", "artefact"}
    info = json.loads((out / INFO).read_text())
    assert info["pool_size"] == len(pipeline.pool) and info["level"] == 2
    assert np.isin(selected, pipeline.pool).all()


def test_top_level_allocation_follows_the_largest_t_rule(pipeline) -> None:
    budget = 30
    out = sample(pipeline, budget)
    top = clusters(pipeline)[1]
    sizes = pool_sizes(top)
    got = np.bincount(top[np.load(out / SELECTED)], minlength=sizes.size)
    t = max(t for t in range(budget + 1) if np.minimum(sizes, t).sum() <= budget)
    base = np.minimum(sizes, t)
    extra = got - base
    assert got.sum() == budget
    assert set(extra.tolist()) <= {0, 1}
    assert (extra[sizes <= t] == 0).all()  # small clusters give everything, no more


def test_level_one_sampling_balances_the_finer_clusters(pipeline) -> None:
    budget = 36
    out = sample(pipeline, budget, level=1)
    fine = clusters(pipeline)[0]
    sizes = pool_sizes(fine)
    got = np.bincount(fine[np.load(out / SELECTED)], minlength=sizes.size)
    t = max(t for t in range(budget + 1) if np.minimum(sizes, t).sum() <= budget)
    assert ((got == np.minimum(sizes, t)) | (got == t + 1)).all()
    assert json.loads((out / INFO).read_text())["level"] == 1


def test_same_seed_same_sample_other_seed_other_sample(pipeline) -> None:
    first = np.load(sample(pipeline, 25, seed=7) / SELECTED)
    again = np.load(sample(pipeline, 25, seed=7, force=True) / SELECTED)
    other = np.load(sample(pipeline, 25, seed=8) / SELECTED)
    assert first.tolist() == again.tolist()
    assert first.tolist() != other.tolist()


def test_a_rerun_reuses_the_finished_run(pipeline) -> None:
    options = SamplingOptions(22, seed=3)
    first = curated_sample(pipeline.clustering_id, options, report=False)
    second = curated_sample(pipeline.clustering_id, options, report=False)
    assert second.reused and second.run_id == first.run_id


@pytest.mark.parametrize("strategy", ["c", "f"])
def test_closest_and_farthest_take_the_extremes_of_each_level_one_cluster(
    pipeline, strategy
) -> None:
    directory = pipeline.clustering_dir / "level_1"
    members = np.load(directory / "members.npy")  # positions in the pool
    distances = np.full(len(pipeline.manifest), np.nan)
    distances[pipeline.pool[members]] = np.load(directory / "distances.npy")
    selected = np.load(sample(pipeline, 30, strategy=strategy) / SELECTED)
    fine = clusters(pipeline)[0]
    for cluster in np.unique(fine[selected]):
        inside = np.flatnonzero(fine == cluster)
        chosen = np.intersect1d(inside, selected)
        rest = np.setdiff1d(inside, chosen)
        if rest.size:
            if strategy == "c":
                assert distances[chosen].max() <= distances[rest].min()
            else:
                assert distances[chosen].min() >= distances[rest].max()


def test_random_baseline_goes_through_the_same_outputs(pipeline) -> None:
    out = sample(pipeline, 30, baseline="random")
    selected = np.load(out / SELECTED)
    assert selected.tolist() == np.load(out / BASELINE).tolist()
    balanced = np.load(sample(pipeline, 30) / BASELINE)
    assert balanced.tolist() == selected.tolist()  # same seed: the same random baseline
    metrics = json.loads((out / METRICS).read_text())
    assert metrics["level_2_entropy_curated"] == metrics["level_2_entropy_random"]


def test_more_than_the_pool_takes_the_whole_pool_with_a_warning(pipeline, caplog) -> None:
    n = len(pipeline.pool)
    with caplog.at_level(logging.WARNING, logger="astrocurate"):
        out = sample(pipeline, n + 100)
    assert np.load(out / SELECTED).tolist() == pipeline.pool.tolist()
    assert "more than the" in caplog.text


def test_metrics_compare_pool_curated_and_random(pipeline) -> None:
    run = curated_sample(pipeline.clustering_id, SamplingOptions(30), report=False)
    metrics = json.loads((run.output_dir / METRICS).read_text())
    logged = client().get_run(run.run_id).data.metrics
    for lvl in (1, 2):
        for kind in ("pool", "curated", "random"):
            assert 0.0 <= metrics[f"level_{lvl}_entropy_{kind}"] <= 1.0
            assert logged[f"level_{lvl}_entropy_{kind}"] == pytest.approx(
                metrics[f"level_{lvl}_entropy_{kind}"]
            )
    # balanced over the top clusters: more even than the pool there
    assert metrics["level_2_entropy_curated"] > metrics["level_2_entropy_pool"]
    assert {"class_entropy_pool", "class_entropy_curated", "class_entropy_random"} <= set(metrics)
    assert any(k.startswith("class_enrichment_") for k in metrics)
    assert logged["n_selected"] == 30


def test_sample_metrics_by_hand() -> None:
    top = np.array([0, 0, 0, 0, 0, 0, 1, 1])
    truth = np.array(["a", "a", "a", "a", "a", "a", "b", "b"])
    chosen, baseline = np.array([0, 6, 7, 1]), np.array([0, 1, 2, 3])
    metrics = sample_metrics([top], chosen, baseline, truth)
    assert metrics["level_1_entropy_curated"] == pytest.approx(1.0)
    assert metrics["level_1_entropy_random"] == pytest.approx(0.0)
    assert metrics["level_1_largest_share_pool"] == pytest.approx(0.75)
    assert metrics["class_share_b_curated"] == pytest.approx(0.5)
    assert metrics["class_enrichment_b"] == pytest.approx(0.5 / 0.25)
    assert metrics["class_enrichment_random_b"] == pytest.approx(0.0)
    assert metrics["class_entropy_pool"] == pytest.approx(sampling.normalized_entropy([6, 2]))


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_samples": 0}, "--num-samples"),
        ({"num_samples": -5}, "--num-samples"),
        ({"num_samples": 10, "strategy": "x"}, "--strategy"),
        ({"num_samples": 10, "level": 3}, "--level=3"),
        ({"num_samples": 10, "baseline": "uniform"}, "--baseline"),
        ({"num_samples": 10, "export": ("jpeg",)}, "--export"),
    ],
)
def test_bad_options_are_refused(pipeline, options, message) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        curated_sample(pipeline.clustering_id, SamplingOptions(**options), report=False)


def test_refuses_runs_that_are_not_finished_clusterings(pipeline) -> None:
    with pytest.raises(InvalidRunError, match="'feature_extraction' run"):
        curated_sample(pipeline.features.run_id, SamplingOptions(5), report=False)
    with pytest.raises(RunNotFoundError):
        curated_sample(uuid.uuid4().hex, SamplingOptions(5), report=False)
    config = ClusteringConfig.from_mapping({**CONFIG, "seed": 99})
    prepared = prepare_clustering(pipeline.features.run_id, config)
    with pytest.raises(InvalidRunError, match=r"has not been run; run it: cd .* && \./run\.sh"):
        curated_sample(prepared.run_id, SamplingOptions(5), report=False)
    client().set_terminated(prepared.run_id, status="FAILED")
    with pytest.raises(InvalidRunError, match="is FAILED"):
        curated_sample(prepared.run_id, SamplingOptions(5), report=False)


def test_guide_command_and_usage_errors(pipeline) -> None:
    script = [sys.executable, str(ROOT / "scripts" / "random_sampling.py")]
    ok = subprocess.run(
        [*script, "--clustering-id", pipeline.clustering_id, "--num-samples", "33", "--no-report"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stderr
    record = get_run(ok.stdout.strip())
    assert record.step == "curated_sampling" and record.finished
    assert record.input_run_ids == [pipeline.clustering_id]
    assert np.load(record.output_dir / SELECTED).size == 33
    bad = subprocess.run(
        [*script, "--clustering-id", pipeline.clustering_id, "--num-samples", "0"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2
    assert "--num-samples" in bad.stderr and "expected a whole number >= 1" in bad.stderr


# --------------------------------------------------------------------------- exports


@pytest.fixture(scope="module")
def exported(curation_pipeline) -> Path:
    return sample(curation_pipeline, 24, export=("npy", "hdf5", "fits", "png"))


def test_npy_export_holds_the_cutout_pixels(pipeline, exported) -> None:
    curated = pd.read_parquet(exported / CURATED)
    table = pd.read_parquet(exported / "export" / "npy" / "manifest.parquet")
    reader = CutoutReader.from_directory(pipeline.merged.output_dir)
    assert table["cutout_id"].tolist() == curated["cutout_id"].tolist()
    for size in curated["window_size"].unique():
        stack = np.load(exported / "export" / "npy" / f"cutouts_w{size}.npy")
        rows = table[table["window_size"] == size]
        assert stack.dtype == np.float32 and stack.shape == (len(rows), size, size)
        np.testing.assert_array_equal(stack[rows["export_row"]], reader.read(rows["cutout_id"]))


def test_hdf5_export_reads_back(pipeline, exported) -> None:
    import h5py

    curated = pd.read_parquet(exported / CURATED)
    reader = CutoutReader.from_directory(pipeline.merged.output_dir)
    with h5py.File(exported / "export" / "cutouts.h5") as handle:
        for size, rows in curated.groupby("window_size"):
            group = handle[f"w{size}"]
            np.testing.assert_array_equal(group["images"][:], reader.read(rows["cutout_id"]))
            assert group["cutout_id"][:].tolist() == rows["cutout_id"].tolist()
            assert group["ra"][:] == pytest.approx(rows["ra"].to_numpy())


def test_fits_export_carries_a_wcs_centred_on_the_cutout(pipeline, exported) -> None:
    from astropy.io import fits
    from astropy.wcs import WCS

    curated = pd.read_parquet(exported / CURATED)
    reader = CutoutReader.from_directory(pipeline.merged.output_dir)
    for row in curated.itertuples():
        with fits.open(exported / "export" / "fits" / f"{row.cutout_id}.fits") as hdul:
            image, header = hdul[0].data, hdul[0].header
        np.testing.assert_array_equal(image, reader[row.cutout_id])
        centre = (row.window_size - 1) / 2
        sky = WCS(header).celestial.pixel_to_world(centre, centre).icrs
        assert sky.ra.deg == pytest.approx(row.ra, abs=1e-7)
        assert sky.dec.deg == pytest.approx(row.dec, abs=1e-7)
        assert (header["X0"], header["Y0"]) == (row.x0, row.y0)


def test_png_export_has_one_preview_per_cutout(exported) -> None:
    from PIL import Image

    curated = pd.read_parquet(exported / CURATED)
    pngs = sorted((exported / "export" / "png").glob("*.png"))
    assert len(pngs) == len(curated)
    image = np.asarray(Image.open(pngs[0]))
    assert image.dtype == np.uint8 and image.std() > 0
    assert "asinh" in (exported / "export" / "png" / "stretch.txt").read_text()


# --------------------------------------------------------------------------- Dataset


def test_dataset_by_run_id_reads_the_export(pipeline, exported) -> None:
    run_id = exported.name
    dataset = CuratedDataset(run_id, window_size=32)
    curated = pd.read_parquet(exported / CURATED)
    rows = curated[curated["window_size"] == 32]
    assert len(dataset) == len(rows)
    reader = CutoutReader.from_directory(pipeline.merged.output_dir)
    first = dataset[0]
    assert first.shape == (1, 32, 32) and first.dtype == torch.float32
    np.testing.assert_array_equal(first[0].numpy(), reader[int(rows["cutout_id"].iloc[0])])
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, num_workers=2)
    batches = list(loader)
    assert sum(len(b) for b in batches) == len(rows)


def test_dataset_without_export_reads_the_survey_store(pipeline) -> None:
    out = sample(pipeline, 12)
    dataset = CuratedDataset(out, return_metadata=True, transform=lambda x: x * 2)
    image, row = dataset[3]
    reader = CutoutReader.from_directory(pipeline.merged.output_dir)
    np.testing.assert_array_equal(image[0].numpy(), 2 * reader[row["cutout_id"]])
    assert "cluster_l2" in row
    with pytest.raises(InvalidArgumentError, match="window_size=48"):
        CuratedDataset(out, window_size=48)


# --------------------------------------------------------------------------- report


def test_report_is_written_logged_and_regenerated(pipeline, capsys) -> None:
    from astrocurate.cli import main

    run = curated_sample(pipeline.clustering_id, SamplingOptions(20, seed=5))
    page = run.output_dir / "report" / "index.html"
    assert page.is_file() and "<img" in page.read_text()
    artifacts = {a.path for a in client().list_artifacts(run.run_id, "report")}
    assert "report/index.html" in artifacts
    page.unlink()
    assert main(["report", run.run_id]) == 0
    assert capsys.readouterr().out.strip() == str(page)
    assert page.is_file()
    assert main(["report", pipeline.clustering_id]) == 1  # not a sampling run


# --------------------------------------------------------------------------- near-duplicates


def test_near_duplicates_are_left_out_and_listed(pipeline) -> None:
    from astrocurate.algorithms.duplicates import pairs_within
    from astrocurate.stages.curated_sampling.outputs import NEAR_DUPLICATES

    threshold = 0.995
    out = sample(pipeline, 60, dedup_threshold=threshold)
    metrics = json.loads((out / METRICS).read_text())
    table = pd.read_parquet(out / NEAR_DUPLICATES)
    assert metrics["near_duplicates_pool"] == len(table) > 0
    assert metrics["near_duplicate_share_pool"] == pytest.approx(len(table) / len(pipeline.pool))
    selected = np.load(out / SELECTED)
    assert not set(selected) & set(table["cutout_id"])
    assert set(table["duplicate_of"]) <= set(pipeline.pool) - set(table["cutout_id"])
    assert (table["similarity"] >= threshold).all()
    features = np.load(pipeline.features.output_dir / "features.npy")
    center = features[pipeline.pool].mean(axis=0)  # compared centred on the pool's mean
    groups = clusters(pipeline)[0]
    assert metrics["near_duplicate_pairs_curated"] == 0
    assert pairs_within(features, groups, threshold, selected, center=center) == 0
    baseline = np.load(out / BASELINE)
    assert metrics["near_duplicate_pairs_random"] == pairs_within(
        features, groups, threshold, baseline, center=center
    )
    assert get_run(out.name).params["dedup_threshold"] == str(threshold)


def test_without_dedup_a_run_keeps_its_earlier_parameters(pipeline) -> None:
    out = sample(pipeline, 61)
    assert "dedup_threshold" not in get_run(out.name).params
    assert not (out / "near_duplicates.parquet").exists()


@pytest.mark.parametrize("threshold", [0.0, 1.5, float("nan")])
def test_a_dedup_threshold_out_of_range_is_refused(threshold) -> None:
    with pytest.raises(InvalidArgumentError, match="--dedup-threshold"):
        SamplingOptions(10, dedup_threshold=threshold).validate()


# --------------------------------------------------------------------------- outliers


@pytest.mark.parametrize("mode", ["list", "exclude", "include"])
def test_outliers_are_scored_listed_and_excluded_or_included(pipeline, mode) -> None:
    from astrocurate.stages.curated_sampling.outputs import OUTLIERS

    out = sample(pipeline, 50, outliers=mode, outlier_share=0.05)
    table = pd.read_parquet(out / OUTLIERS)
    assert len(table) == int(np.ceil(0.05 * len(pipeline.pool)))
    assert table["rank"].tolist() == list(range(1, len(table) + 1))
    assert table["outlier_score"].is_monotonic_decreasing
    assert set(table["cutout_id"]) <= set(pipeline.pool)
    selected = set(np.load(out / SELECTED).tolist())
    listed = set(table["cutout_id"])
    metrics = json.loads((out / METRICS).read_text())
    share = len(selected & listed) / len(selected)
    assert metrics["outlier_share_curated"] == pytest.approx(share)
    if mode == "exclude":
        assert not selected & listed
    if mode == "include":
        assert listed <= selected
    assert any(k.startswith("outlier_top100_class_share_") for k in metrics)  # truth known
    curated = pd.read_parquet(out / CURATED)
    assert "outlier_score" in curated.columns


def test_outlier_options_are_checked() -> None:
    with pytest.raises(InvalidArgumentError, match="--outliers"):
        SamplingOptions(10, outliers="drop").validate()
    with pytest.raises(InvalidArgumentError, match="--outlier-share"):
        SamplingOptions(10, outliers="list", outlier_share=0.9).validate()


def test_the_report_shows_the_outliers_and_the_near_duplicate_pairs(pipeline) -> None:
    run = curated_sample(
        pipeline.clustering_id,
        SamplingOptions(40, dedup_threshold=0.995, outliers="list", outlier_share=0.05),
    )
    page = (run.output_dir / "report" / "index.html").read_text()
    assert "Quality: outliers, near-duplicates, noise" in page
    assert "outliers: the 12 highest isolation-forest scores of the pool" in page
    assert "near-duplicates: the 6 closest pairs, kept cutout then the left-out one" in page


def test_empty_sky_below_a_peak_snr_is_left_out(pipeline) -> None:
    out = sample(pipeline, 50, min_peak_snr=8.0)
    selected = np.load(out / SELECTED)
    by_row = pipeline.manifest.set_index("cutout_id")
    local = by_row["peak_snr_map"]  # against the rms map beside each mosaic
    assert local.notna().all()
    assert (local.loc[selected] >= 8.0).all()
    metrics = json.loads((out / METRICS).read_text())
    pool_snr = local.loc[pipeline.pool]
    assert metrics["faint_pool"] == int((~(pool_snr >= 8.0)).sum()) > 0
    assert metrics["faint_share_curated"] == 0.0
    assert get_run(out.name).params["min_peak_snr"] == "8.0"
    with pytest.raises(InvalidArgumentError, match="--min-peak-snr"):
        SamplingOptions(10, min_peak_snr=0.0).validate()
