"""The optional source-finding step: PyBDSF on a synthetic survey through the real CLI."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS

from astrocurate import cli, tracking
from astrocurate.stages.source_finding import outputs
from astrocurate.stages.source_finding import run as source_finding
from astrocurate.synthetic.survey import make_survey
from needs import unavailable


@pytest.fixture(autouse=True)
def _needs_pybdsf() -> None:
    """PyBDSF is the ``sources`` extra, which ``make setup`` installs: CI fails without it."""
    try:
        import bdsf  # noqa: F401
    except ImportError:
        unavailable("PyBDSF is not installed (pip install 'astrocurate[sources]')")


SIZE = 256
MATCH_ARCSEC = 6.0


@pytest.fixture(scope="module")
def survey(tmp_path_factory: pytest.TempPathFactory):
    return make_survey(tmp_path_factory.mktemp("survey") / "s", n_mosaics=2, mosaic_size=SIZE)


def _find(capsys, *argv: str) -> tuple[int, str, str]:
    status = cli.main(["find-sources", *argv])
    out, err = capsys.readouterr()
    return status, out, err


def _run_dir(run_id: str) -> Path:
    return tracking.get_run(run_id).output_dir


def test_find_sources_writes_source_lists_and_rms_maps_then_reuses_them(
    store, survey, capsys, caplog
) -> None:
    argv = ["--mosaics_path", str(survey.output_dir), "--rms-box", "60,15", "--workers", "2"]
    status, out, err = _find(capsys, *argv)
    assert status == 0, err
    run_id = out.strip()
    assert len(run_id) == 32 and out == run_id + "\n"  # stdout is the run ID alone
    run_dir = _run_dir(run_id)
    assert run_dir == store / "outputs" / "source_finding" / run_id
    assert tracking.get_run(run_id).status == "FINISHED"

    index = outputs.read_index(run_dir)
    assert list(index.columns) == list(outputs.INDEX_COLUMNS)
    assert list(index["mosaic"]) == survey.mosaic_names  # the cutouts step's names
    assert set(index["status"]) == {"ok"}
    assert np.allclose(index["bmaj_arcsec"], survey.beam_fwhm_arcsec)
    assert (index["frequency_hz"] == 144e6).all()  # RESTFRQ of the synthetic headers
    assert not (run_dir / source_finding.PARTS_DIR).exists()

    truth = pd.read_parquet(survey.catalogue_path)
    for row in index.itertuples():
        assert row.catalogue_file == f"catalogues/{row.mosaic}.srl.fits"
        assert (run_dir / row.catalogue_file) == outputs.catalogue_path(run_dir, row.mosaic)
        _check_catalogue(run_dir, row, truth)
        _check_rms_map(run_dir, row, survey.noise_rms_jy)

    metrics = tracking.client().get_run(run_id).data.metrics
    assert metrics["n_mosaics"] == 2
    assert metrics["n_sources"] == index["n_sources"].sum() > 0
    assert metrics["seconds"] > 0

    caplog.clear()
    with caplog.at_level(logging.INFO):
        again = _find(capsys, *argv[:-2], "--workers", "1")  # workers do not change the run
    assert again[:2] == (0, out)
    assert "reusing finished source_finding run" in caplog.text
    found = cli.main(["find-run", "--run-name", "source_finding"])
    assert found == 0 and capsys.readouterr().out == out


def _check_catalogue(run_dir: Path, row, truth: pd.DataFrame) -> None:
    catalogue = outputs.read_catalogue(run_dir, row.mosaic)
    assert len(catalogue) == row.n_sources > 0
    wcs = WCS(fits.getheader(row.mosaic_path), naxis=2)
    x, y = wcs.wcs_world2pix(catalogue["RA"], catalogue["DEC"], 0)
    assert ((x > -0.5) & (x < SIZE - 0.5) & (y > -0.5) & (y < SIZE - 0.5)).all()

    bright = truth[
        (truth["mosaic"] == row.mosaic) & (truth["class"] == "point") & (truth["peak_snr"] > 20)
    ]
    assert len(bright) >= 3, "too few bright point sources for the check"
    found = SkyCoord(catalogue["RA"].to_numpy() * u.deg, catalogue["DEC"].to_numpy() * u.deg)
    wanted = SkyCoord(bright["ra"].to_numpy() * u.deg, bright["dec"].to_numpy() * u.deg)
    _, separation, _ = wanted.match_to_catalog_sky(found)
    assert np.mean(separation.arcsec < MATCH_ARCSEC) >= 0.8, separation.arcsec


def _check_rms_map(run_dir: Path, row, noise_rms: float) -> None:
    rms = outputs.read_rms_map(run_dir, row.mosaic)
    assert row.rms_file == f"rms/{row.mosaic}.rms.fits"
    assert rms.shape == fits.getdata(row.mosaic_path).shape == (SIZE, SIZE)
    median = float(np.nanmedian(rms))
    assert abs(median / noise_rms - 1) < 0.3, median


def test_an_interrupted_run_resumes_and_skips_the_finished_mosaics(
    store, survey, monkeypatch
) -> None:
    options = source_finding.SourceFindingOptions(rms_box="60,15", workers=1)
    calls: list[str] = []
    real = source_finding._run_pybdsf

    def interrupted_on_the_second(task, work):
        calls.append(task.name)
        if len(calls) == 2:
            raise KeyboardInterrupt("stopped")
        return real(task, work)

    monkeypatch.setattr(source_finding, "_run_pybdsf", interrupted_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        source_finding.find_sources(survey.output_dir, options)
    (first,) = tracking.find_runs("source_finding", include_unfinished=True)
    assert first.status != "FINISHED"
    parts = first.output_dir / source_finding.PARTS_DIR
    assert [p.name for p in parts.iterdir()] == [f"{survey.mosaic_names[0]}.json"]
    assert outputs.catalogue_path(first.output_dir, survey.mosaic_names[0]).is_file()
    assert not list(first.output_dir.glob(".tmp*"))  # PyBDSF's work folder is removed

    run = source_finding.find_sources(survey.output_dir, options)
    assert run.resumed and run.run_id == first.run_id
    assert calls == [*survey.mosaic_names, survey.mosaic_names[1]]  # the first is not redone
    assert set(outputs.read_index(run.output_dir)["status"]) == {"ok"}
    assert tracking.get_run(run.run_id).status == "FINISHED"


def test_pending_lists_only_the_mosaics_without_a_summary(tmp_path) -> None:
    task = source_finding._MosaicTask
    tasks = [
        task(i, name, f"/s/{name}.fits", str(tmp_path), None, None, 3.0, 5.0, None)
        for i, name in enumerate(["a", "b/c", "d"])
    ]
    (tmp_path / source_finding.PARTS_DIR).mkdir()
    source_finding.summary_path(tmp_path, "b/c").write_text("{}")
    assert [t.name for t in source_finding.pending(tasks)] == ["a", "d"]


def _write_mosaic(path: Path, template: Path, data: np.ndarray, drop=()) -> None:
    header = fits.getheader(template)
    for key in drop:
        del header[key]
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.writeto(path, data.astype(np.float32), header)


def test_a_mosaic_pybdsf_fails_on_is_failed_in_the_index_and_the_run_finishes(
    store, survey, capsys, caplog
) -> None:
    mosaics = store / "mixed"
    good = survey.mosaic_paths[0]
    shutil.copytree(good.parent, mosaics / good.parent.name)
    _write_mosaic(mosaics / "blank.fits", good, np.full((SIZE, SIZE), np.nan))
    (mosaics / "broken.fits").write_bytes(b"SIMPLE  =  not a FITS file")
    with caplog.at_level(logging.WARNING):
        status, out, err = _find(capsys, "--mosaics_path", str(mosaics), "--workers", "1")
    assert status == 0, err
    index = outputs.read_index(_run_dir(out.strip())).set_index("mosaic")
    assert index.loc[good.parent.name, "status"] == "ok"
    assert index.loc["blank", "status"] == "failed"
    assert "All pixels in the image are blanked" in index.loc["blank", "reason"]
    assert index.loc["broken", "status"] == "failed"
    assert index.loc["blank", "catalogue_file"] == ""
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    failed = [w for w in warnings if "source finding failed" in w]
    assert len(failed) == 2 and all("\n" not in w for w in failed), warnings


def test_a_mosaic_without_sources_gets_an_empty_source_list(store, tmp_path, capsys) -> None:
    empty = make_survey(
        tmp_path / "empty", n_mosaics=1, mosaic_size=128, source_density_per_deg2=0, seed=3
    )
    status, out, err = _find(capsys, "--mosaics_path", str(empty.output_dir))
    assert status == 0, err
    (row,) = outputs.read_index(_run_dir(out.strip())).itertuples()
    assert (row.status, row.n_sources) == ("ok", 0)
    catalogue = outputs.read_catalogue(_run_dir(out.strip()), row.mosaic)
    assert len(catalogue) == 0 and {"RA", "DEC", "Total_flux"} <= set(catalogue.columns)


@pytest.fixture
def without_beam(store, survey) -> Path:
    mosaics = store / "nobeam"
    _write_mosaic(
        mosaics / "P1" / "mosaic-blanked.fits",
        survey.mosaic_paths[0],
        fits.getdata(survey.mosaic_paths[0]),
        drop=("BMAJ", "BMIN", "BPA", "RESTFRQ"),
    )
    return mosaics


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--thresh-isl", "0"], "--thresh-isl=0.0 must be a finite number in (0, inf)"),
        (["--thresh-pix", "2"], "--thresh-pix=2.0 must be >= --thresh-isl=3.0"),
        (["--rms-box", "10"], "--rms-box='10' must be BOX,STEP"),
        (["--beam", "6,7"], "--beam='6,7' must be MAJ[,MIN[,PA]]"),
        (["--workers", "0"], "--workers=0 must be >= 1"),
        (["--frequency", "1.4e8"], "mosaic {nobeam}/P1/mosaic-blanked.fits has no BMAJ"),
        (["--beam", "6"], "mosaic {nobeam}/P1/mosaic-blanked.fits has no RESTFRQ, RESTFREQ"),
    ],
)
def test_bad_options_and_headers_fail_in_one_line(
    store, without_beam, capsys, extra, expected
) -> None:
    status, out, err = _find(capsys, "--mosaics_path", str(without_beam), *extra)
    assert (status, out) == (1, "")
    assert err.count("\n") == 1 and err.startswith("astrocurate find-sources: error: "), err
    assert expected.format(nobeam=without_beam) in err
    assert tracking.find_runs("source_finding", include_unfinished=True) == []  # no run


def test_the_beam_and_frequency_options_replace_missing_header_keys(
    store, without_beam, capsys
) -> None:
    argv = ["--mosaics_path", str(without_beam), "--beam", "6,6,0", "--frequency", "1.44e8"]
    status, out, err = _find(capsys, *argv)
    assert status == 0, err
    (row,) = outputs.read_index(_run_dir(out.strip())).itertuples()
    assert (row.status, row.frequency_hz) == ("ok", 1.44e8)
    assert row.bmaj_arcsec == pytest.approx(6.0)
    assert row.n_sources > 0


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_a_directory_without_mosaics_fails_in_one_line(store, capsys, make) -> None:
    path = store / "nothing"
    if make == "empty":
        path.mkdir()
        (path / "notes.txt").write_text("no FITS here")
    status, _, err = _find(capsys, "--mosaics_path", str(path))
    assert status == 1 and err.count("\n") == 1 and "--mosaics_path" in err, err


def test_without_pybdsf_the_command_says_how_to_install_it(store, survey, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "bdsf", None)  # import bdsf raises ImportError
    status, _, err = _find(capsys, "--mosaics_path", str(survey.output_dir))
    assert status == 1 and err.count("\n") == 1 and "pip install bdsf" in err, err


def test_frequency_comes_from_a_freq_axis_and_names_are_safe_file_stems() -> None:
    header = fits.Header({"NAXIS": 3, "CTYPE3": "FREQ", "CRVAL3": 144.0, "CUNIT3": "MHz"})
    assert source_finding.header_frequency(header, "m.fits") == 144e6
    stems = {outputs.file_stem(n) for n in ["P1+2", "a/b", "a%2Fb", ".hidden", "x~1"]}
    assert stems == {"P1+2", "a%2Fb", "a%252Fb", "%2Ehidden", "x~1"}
