"""A mosaic's rms map and source catalogue through cutting, merge and sampling."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.table import Table

from astrocurate import cli, tracking
from astrocurate.algorithms.windows import window_medians
from astrocurate.io.cutout_store import read_manifest
from astrocurate.io.mosaics import open_mosaic
from astrocurate.stages.cutting_out.run import CutoutOptions, make_cutouts
from astrocurate.synthetic.survey import load_truth_catalogue, make_survey
from script_imports import heavy_loaded, run_script

W = 64


@pytest.fixture(scope="module")
def survey(tmp_path_factory: pytest.TempPathFactory):
    """Two 256-px mosaics whose noise triples towards their edges, with rms maps beside."""
    return make_survey(
        tmp_path_factory.mktemp("survey"), n_mosaics=2, mosaic_size=256, seed=5,
        noise_edge_factor=3.0,
    )  # fmt: skip


def _write_source_list(survey, path: Path, *, drop: tuple[str, ...] = ()) -> pd.DataFrame:
    """A PyBDSF-style source list (FITS, units as PyBDSF writes them) from the truth."""
    truth = load_truth_catalogue(survey.catalogue_path).drop_duplicates("source_id")
    codes = np.array(["S", "M", "C"])[truth["source_id"].to_numpy() % 3]
    table = Table(
        {
            "Source_id": truth["source_id"].to_numpy(),
            "RA": truth["ra"].to_numpy(),
            "DEC": truth["dec"].to_numpy(),
            "Total_flux": truth["flux_jy"].to_numpy(),
            "Maj": truth["size_arcsec"].to_numpy() / 3600.0,
            "S_Code": codes,
        }
    )
    for name, unit in (("RA", "deg"), ("DEC", "deg"), ("Total_flux", "Jy"), ("Maj", "deg")):
        table[name].unit = unit
    table.remove_columns(list(drop))
    table.write(path, format="fits", overwrite=True)
    return truth.assign(s_code=codes)


def _cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    return code, capsys.readouterr().err.strip()


def _finished_runs(step: str) -> int:
    return len(tracking.find_runs(step, include_unfinished=True))


def test_cutouts_read_the_rms_map_beside_each_mosaic(store: Path, survey) -> None:
    run = make_cutouts(survey.output_dir, store / "out", CutoutOptions(W), workers=1)
    manifest = read_manifest(run.output_dir)
    params = tracking.get_run(run.run_id).params
    assert "companions_digest" in params and "rms_maps" in params
    assert np.isfinite(manifest["rms_map"]).all()
    # the map's median over each window is the drawn rms near the window's centre
    centre = (manifest[["x0", "y0"]].to_numpy() + (W - 1) / 2) - 127.5
    r2 = (centre**2).sum(axis=1) / survey.footprint_radius_px**2
    expected = 1e-4 * (1.0 + 2.0 * r2)
    np.testing.assert_allclose(manifest["rms_map"], expected, rtol=0.12)
    # only the map's grid rows were read (one in 2 at 64 px): the medians of the whole map
    for path, rows in manifest.groupby("mosaic_path"):
        beside = (Path(path).with_name("mosaic.rms.fits"), Path(path).with_suffix(".rms.fits"))
        rms_path = next(p for p in beside if p.is_file())
        with open_mosaic(rms_path) as rms:
            full = rms.read_rows(0, rms.shape[0])
        medians = window_medians(full, rows["x0"].to_numpy(), rows["y0"].to_numpy(), W)
        assert rows["rms_map"].to_numpy().tobytes() == medians.tobytes()
    median = manifest["max"] - manifest["peak_snr"] * manifest["noise_mad"]
    np.testing.assert_allclose(
        manifest["peak_snr_map"], (manifest["max"] - median) / manifest["rms_map"], rtol=1e-9
    )
    assert manifest["n_sources"].isna().all()  # no catalogue given or found


def test_without_companions_the_run_is_keyed_as_before(store: Path, survey, tmp_path) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(survey.output_dir, bare)
    for rms in bare.rglob("*.rms.fits"):
        rms.unlink()
    run = make_cutouts(bare, store / "out", CutoutOptions(W), workers=1)
    assert not {"rms_maps", "catalogue", "companions_digest"} & set(
        tracking.get_run(run.run_id).params
    )
    manifest = read_manifest(run.output_dir)
    assert manifest["rms_map"].isna().all() and manifest["peak_snr_map"].isna().all()
    off = make_cutouts(survey.output_dir, store / "out", CutoutOptions(W, rms_maps="none"))
    assert read_manifest(off.output_dir)["rms_map"].isna().all()


def test_survey_wide_catalogue_counts_the_sources_of_every_cutout(
    store: Path, survey, tmp_path
) -> None:
    truth = _write_source_list(survey, tmp_path / "survey.srl.fits")
    options = CutoutOptions(W, catalogue=str(tmp_path / "survey.srl.fits"))
    manifest = read_manifest(make_cutouts(survey.output_dir, store / "out", options).output_dir)
    per_mosaic = load_truth_catalogue(survey.catalogue_path)
    for _, cut in manifest.sample(40, random_state=0).iterrows():
        here = per_mosaic[[cut["mosaic_path"].endswith(p) for p in per_mosaic["mosaic_path"]]]
        inside = here[
            (here["x"] >= cut["x0"] - 0.5)
            & (here["x"] < cut["x0"] + W - 0.5)
            & (here["y"] >= cut["y0"] - 0.5)
            & (here["y"] < cut["y0"] + W - 0.5)
        ]
        assert cut["n_sources"] == len(inside)
        codes = truth.set_index("source_id").loc[inside["source_id"], "s_code"]
        assert (cut["n_single"], cut["n_multiple"], cut["n_complex"]) == (
            (codes == "S").sum(),
            (codes == "M").sum(),
            (codes == "C").sum(),
        )
        if len(inside):
            assert cut["max_flux_jy"] == pytest.approx(inside["flux_jy"].max())
            assert cut["max_size_arcsec"] == pytest.approx(inside["size_arcsec"].max())
        else:
            assert np.isnan(cut["max_flux_jy"])
    assert manifest["n_sources"].sum() > 0


def test_catalogue_beside_each_mosaic_is_found(store: Path, survey, tmp_path) -> None:
    layout = tmp_path / "beside"
    shutil.copytree(survey.output_dir, layout)
    for mosaic in layout.glob("*/mosaic-blanked.fits"):
        _write_source_list(survey, mosaic.parent / "mosaic.srl.fits")
    run = make_cutouts(layout, store / "out", CutoutOptions(W), workers=2)
    manifest = read_manifest(run.output_dir)
    assert np.isfinite(manifest["n_sources"]).all() and manifest["n_sources"].sum() > 0


def test_bad_companions_are_refused_in_one_line(store: Path, survey, tmp_path, capsys) -> None:
    before = _finished_runs("cutting_out")
    shifted = tmp_path / "shifted"
    shutil.copytree(survey.output_dir, shifted)
    rms_path = next(shifted.rglob("mosaic.rms.fits"))
    with fits.open(rms_path, mode="update") as hdus:
        hdus[0].header["CRVAL1"] += 0.01
    code, err = _cli(capsys, "cutouts", "--mosaics_path", str(shifted), "--output_path",
                     str(store / "o"), "--window_size", "64")  # fmt: skip
    assert code == 1 and "another WCS" in err and str(rms_path) in err and "\n" not in err

    small = tmp_path / "small"
    shutil.copytree(survey.output_dir, small)
    rms_path = next(small.rglob("mosaic.rms.fits"))
    data, header = fits.getdata(rms_path, header=True)
    fits.writeto(rms_path, data[:100], header, overwrite=True)
    code, err = _cli(capsys, "cutouts", "--mosaics_path", str(small), "--output_path",
                     str(store / "o"), "--window_size", "64")  # fmt: skip
    assert code == 1 and "100x256 pixels, expected 256x256" in err and "\n" not in err

    _write_source_list(survey, tmp_path / "nopos.fits", drop=("RA", "DEC"))
    code, err = _cli(capsys, "cutouts", "--mosaics_path", str(survey.output_dir),
                     "--output_path", str(store / "o"), "--window_size", "64",
                     "--catalogue", str(tmp_path / "nopos.fits"))  # fmt: skip
    assert code == 1 and "RA/DEC" in err and "nopos.fits" in err and "\n" not in err

    code, err = _cli(capsys, "cutouts", "--mosaics_path", str(survey.output_dir),
                     "--output_path", str(store / "o"), "--window_size", "64",
                     "--rms-maps", "{dir}/{field}.rms.fits")  # fmt: skip
    assert code == 1 and "--rms-maps" in err and "field" in err and "\n" not in err
    assert _finished_runs("cutting_out") == before


# --------------------------------------------------------------------------- merge, sampling


@pytest.fixture(scope="module")
def steered_pipeline(survey, tracking_db: str, tmp_path_factory: pytest.TempPathFactory):
    """Cutouts with the survey's rms maps and a survey-wide catalogue, merged, clustered."""
    from astrocurate.stages.clustering.run import (
        ClusteringConfig,
        prepare_clustering,
        run_clustering,
    )
    from astrocurate.stages.merge_cutouts.run import merge_cutouts
    from curation_pipeline import CONFIG, feature_run, features_from_manifest

    work = tmp_path_factory.mktemp("steered")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", tracking_db)
        patch.setenv("MLFLOW_EXPERIMENT_NAME", f"steered-{work.name}")
        patch.setenv("ASTROCURATE_DATA_DIR", str(work / "outputs"))
        _write_source_list(survey, work / "survey.srl.fits")
        options = CutoutOptions(32, catalogue=str(work / "survey.srl.fits"))
        cut = make_cutouts(survey.output_dir, work / "outputs", options, workers=1)
        merged = merge_cutouts([cut.run_id])
        manifest = read_manifest(merged.output_dir)
        features = feature_run(merged.run_id, features_from_manifest(manifest))
        prepared = prepare_clustering(features.run_id, ClusteringConfig.from_mapping(CONFIG))
        run_clustering(prepared.directory)
        yield cut, manifest, prepared.run_id


def _sample_run(clustering_id: str, n: int, **options):
    from astrocurate.stages.curated_sampling.run import SamplingOptions, curated_sample

    run = curated_sample(clustering_id, SamplingOptions(n, **options), report=False)
    metrics = json_metrics(run.output_dir)
    selected = np.load(run.output_dir / "selected.npy")
    return run, metrics, selected


def json_metrics(directory: Path) -> dict:
    import json

    return json.loads((directory / "metrics.json").read_text())


def test_merge_drops_empty_and_noisy_cutouts_before_clustering(
    steered_pipeline, tracking_db, monkeypatch
) -> None:
    from astrocurate.stages.merge_cutouts.run import merge_cutouts

    cut, manifest, _ = steered_pipeline
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_db)
    run = merge_cutouts([cut.run_id], min_peak_snr=5.0, max_noise_ratio=1.25)
    kept = read_manifest(run.output_dir)
    snr = kept["peak_snr_map"]
    assert (snr >= 5.0).all()
    metrics = tracking.client().get_run(run.run_id).data.metrics
    empty = ~(manifest["peak_snr_map"] >= 5.0)
    assert metrics["n_empty_dropped"] == empty.sum() > 0
    assert metrics["n_noisy_dropped"] > 0
    assert len(kept) == len(manifest) - int((empty | _noisy(manifest, 1.25)).sum())
    assert metrics["n_noisy_dropped"] == _noisy(manifest, 1.25).sum()
    params = tracking.get_run(run.run_id).params
    assert params["min_peak_snr"] == "5.0" and params["max_noise_ratio"] == "1.25"


def _noisy(manifest: pd.DataFrame, limit: float) -> np.ndarray:
    groups = manifest["mosaic_path"] + manifest["window_size"].astype(str)
    median = manifest.groupby(groups)["rms_map"].transform("median")
    return (manifest["rms_map"] / median > limit).to_numpy()


def test_sampling_flags_noisy_cutouts_and_steers_by_a_catalogue_column(steered_pipeline) -> None:
    _, manifest, clustering_id = steered_pipeline
    run, metrics, selected = _sample_run(clustering_id, 60, max_noise_ratio=1.25)
    noisy = _noisy(manifest, 1.25)  # the pool is every cutout
    assert noisy.any() and not noisy[selected].any()
    assert metrics["noisy_share_curated"] == 0.0 < metrics["noisy_share_random"]
    flags = pd.read_parquet(run.output_dir / "quality_flags.parquet")
    assert flags["noisy"].all() and len(flags) == metrics["noisy_pool"]

    plain = _sample_run(clustering_id, 60)[1]
    steered_run, steered, _ = _sample_run(clustering_id, 60, steer_by="n_sources")
    assert "steer_by" not in tracking.get_run(_sample_run(clustering_id, 60)[0].run_id).params
    assert tracking.get_run(steered_run.run_id).params["steer_by"] == "n_sources"
    assert steered["steer_entropy_curated"] > steered["steer_entropy_pool"]
    assert "steer_entropy_curated" not in plain
    shares = {k: v for k, v in steered.items() if k.startswith("steer_share_")}
    assert shares and all(np.isfinite(v) for v in shares.values())
    codes = _sample_run(clustering_id, 60, steer_by="s_code")[1]
    assert {"steer_share_none_curated", "steer_share_S_curated"} <= set(codes)


def test_bad_sampling_options_are_refused_in_one_line(
    steered_pipeline, curation_pipeline, capsys
) -> None:
    _, _, clustering_id = steered_pipeline
    cases = [
        (clustering_id, ["--steer-by", "colour"], "--steer-by='colour' must be one of"),
        (clustering_id, ["--steer-by", "n_sources", "--steer-bins", "3,2"], "--steer-bins"),
        (clustering_id, ["--max-noise-ratio", "0.5"], "--max-noise-ratio"),
        (curation_pipeline.clustering_id, ["--steer-by", "max_size_arcsec"], "no catalogue"),
    ]
    for cid, extra, message in cases:
        before = _finished_runs("curated_sampling")
        code, err = _cli(capsys, "sample", "--clustering-id", cid, "--num-samples", "10", *extra)
        assert code == 1 and message in err and "\n" not in err, (extra, err)
        assert _finished_runs("curated_sampling") == before


def test_the_report_shows_the_empty_and_noisy_cutouts(steered_pipeline) -> None:
    from astrocurate.stages.curated_sampling.run import SamplingOptions, curated_sample

    _, _, clustering_id = steered_pipeline
    options = SamplingOptions(40, min_peak_snr=5.0, max_noise_ratio=1.25)
    run = curated_sample(clustering_id, options)
    page = (run.output_dir / "report" / "index.html").read_text()
    flags = pd.read_parquet(run.output_dir / "quality_flags.parquet")
    assert f"empty sky: {int(flags['empty'].sum())} left out" in page
    assert f"too noisy: {int(flags['noisy'].sum())} left out" in page


def test_cutouts_take_a_source_finding_runs_maps_and_lists(store: Path, survey) -> None:
    pytest.importorskip("bdsf")
    from astrocurate.stages.source_finding.run import SourceFindingOptions, find_sources

    sf_options = SourceFindingOptions(rms_box="60,15", workers=2)
    found = find_sources(survey.output_dir, sf_options, store / "out")
    options = CutoutOptions(W, sources_id=found.run_id)
    run = make_cutouts(survey.output_dir, store / "out", options, workers=1)
    record = tracking.get_run(run.run_id)
    assert record.input_run_ids == [found.run_id]
    assert record.params["sources_id"] == found.run_id
    manifest = read_manifest(run.output_dir)
    assert np.isfinite(manifest["rms_map"]).all() and np.isfinite(manifest["n_sources"]).all()
    assert manifest["n_sources"].sum() > 0
    # PyBDSF's rms map follows the noise drawn, rising towards the edges
    centre = (manifest[["x0", "y0"]].to_numpy() + (W - 1) / 2) - 127.5
    drawn = 1e-4 * (1.0 + 2.0 * (centre**2).sum(axis=1) / survey.footprint_radius_px**2)
    ratio = manifest["rms_map"].to_numpy() / drawn
    assert 0.8 < np.median(ratio) < 1.4
    assert np.corrcoef(manifest["rms_map"], drawn)[0, 1] > 0.2


def test_a_reused_cutouts_run_opens_no_fits_file_and_imports_no_heavy_library(
    store: Path, survey, tmp_path
) -> None:
    """Keyed by the listing alone: astropy, pandas, pyarrow and MLflow stay unimported."""

    _write_source_list(survey, tmp_path / "survey.srl.fits")
    argv = ["--mosaics_path", str(survey.output_dir), "--output_path", str(store / "out"),
            "--window_size", "32", "--catalogue", str(tmp_path / "survey.srl.fits")]  # fmt: skip
    first = make_cutouts(
        survey.output_dir,
        store / "out",
        CutoutOptions(32, catalogue=str(tmp_path / "survey.srl.fits")),
    )
    heavy = ("mlflow", "sqlalchemy", "pandas", "pyarrow", "astropy", "torch")
    done = run_script("cutouts.py", argv, heavy, cwd=store)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == first.run_id
    assert heavy_loaded(done) == "[]"
