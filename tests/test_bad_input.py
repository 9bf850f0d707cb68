"""Bad-input table (issue 8): wrong flags, IDs, directories and configs through the real CLI.

Every case runs ``astrocurate.cli.main`` in-process and checks the exit status (1 for a
user error, 2 for a usage error), that stderr carries exactly one error line naming the
offending argument or file, and that nothing was left behind: no new file in the working
directory or the shared pipeline's tree, and no new run in the experiment.
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from astropy.io import fits

from astrocurate.cli import build_parser, main
from astrocurate.tracking import find_runs, get_run
from needs import (
    WITHOUT_DAC_OVERRIDE,
    dropping_dac_override_works,
    permission_bits_deny,
    unavailable,
)

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "clusters" / "demo_2lvl_64_8.yaml"
ABSENT_ID = "0123456789abcdef0123456789abcdef"
LOG_LINE = re.compile(r"^astrocurate(\.\w+)*: ")  # "%(name)s: %(message)s" of configure_logging


#: Whether the permission cases run in this process (not root), or as root without
#: CAP_DAC_OVERRIDE in a child process (CI runs as root), or not at all.
PERMISSIONS_DENY = permission_bits_deny()
AS_UNPRIVILEGED_CHILD = not PERMISSIONS_DENY and dropping_dac_override_works()


@dataclass
class Context:
    """What a case builds its command line from."""

    work: Path  # the test's working directory (``store``)
    survey: Path  # a directory of two small FITS mosaics
    pipeline: object  # tests/curation_pipeline.Pipeline
    fits_files: Path  # one good and several bad FITS files (``bad_fits``)
    tiny_merge: object  # a merge run of 8 cutouts (``tiny_merge``)
    expect: list[str] = field(default_factory=list)  # more text the error must contain
    undo: list[Callable[[], None]] = field(default_factory=list)  # run after the case

    @property
    def outputs(self) -> Path:
        return self.work / "outputs"


@pytest.fixture(scope="module")
def survey(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from astrocurate.synthetic.survey import make_survey

    return make_survey(
        tmp_path_factory.mktemp("survey") / "s", n_mosaics=2, mosaic_size=64, seed=1
    ).output_dir


def _sky_header(shape: tuple[int, int]) -> fits.Header:
    """A celestial (RA/Dec, SIN) header for an image of ``shape``."""
    ny, nx = shape
    header = fits.Header()
    for n, (ctype, crval, crpix, cdelt) in enumerate(
        [("RA---SIN", 180.0, nx / 2, -1.5 / 3600), ("DEC--SIN", 50.0, ny / 2, 1.5 / 3600)], 1
    ):
        header[f"CTYPE{n}"], header[f"CRVAL{n}"] = ctype, crval
        header[f"CRPIX{n}"], header[f"CDELT{n}"] = crpix, cdelt
    header["RADESYS"] = "ICRS"
    return header


def _set_card(data: bytes, key: str, card: bytes) -> bytes:
    """Replace the header card ``key`` of a FITS file's bytes by ``card`` (padded to 80)."""
    at = data.index(key.ljust(8).encode())
    return data[:at] + card.ljust(80) + data[at + 80 :]


#: Each bad FITS file of ``bad_fits`` and what the cutouts step must say about it.
BAD_FITS = {
    "broken-header.fits": "corrupt FITS file",  # NAXIS1 = 'sixty-four'
    "no-end-card.fits": "END card",
    "truncated.fits": "truncated file",
    "zero-size.fits": "zero-size image",
    "text.fits": "not a FITS file",  # a text file with a FITS name
    "all-zero.fits": "every pixel is 0",
}
#: Readable files the step cuts with a warning (exit 0), and the warning.
WARNED_FITS = {
    "all-nan.fits": "every window is blank",
    "non-celestial.fits": "no celestial WCS",
    "helioprojective.fits": "helioprojective WCS (HPLN/HPLT), not a sky frame; ra/dec are NaN",
}


@pytest.fixture(scope="module")
def bad_fits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``good.fits`` and one file of each kind in :data:`BAD_FITS` and :data:`WARNED_FITS`."""
    root = tmp_path_factory.mktemp("fits")
    shape = (48, 48)
    good = np.random.default_rng(5).normal(scale=1e-4, size=shape).astype(np.float32)
    fits.PrimaryHDU(good, _sky_header(shape)).writeto(root / "good.fits")
    raw = (root / "good.fits").read_bytes()
    (root / "broken-header.fits").write_bytes(_set_card(raw, "NAXIS1", b"NAXIS1  = 'sixty-four'"))
    (root / "no-end-card.fits").write_bytes(_set_card(raw, "END", b""))
    (root / "truncated.fits").write_bytes(raw[: len(raw) // 2])
    zero = fits.Header({"SIMPLE": True, "BITPIX": -32, "NAXIS": 2, "NAXIS1": 0, "NAXIS2": 48})
    (root / "zero-size.fits").write_bytes(zero.tostring().encode())
    (root / "text.fits").write_text("SIMPLE? no: this is a text file\n")
    fits.PrimaryHDU(np.zeros(shape, np.float32), _sky_header(shape)).writeto(root / "all-zero.fits")
    blank = np.full(shape, np.nan, np.float32)
    fits.PrimaryHDU(blank, _sky_header(shape)).writeto(root / "all-nan.fits")
    linear = fits.Header({"CTYPE1": "FREQ", "CRVAL1": 1.4e8, "CDELT1": 1e5, "CTYPE2": "LINEAR"})
    fits.PrimaryHDU(good, linear).writeto(root / "non-celestial.fits")
    solar = _sky_header(shape)  # a solar image: arcsec from the Sun's centre, no RA/Dec
    solar.update(CTYPE1="HPLN-TAN", CTYPE2="HPLT-TAN", CUNIT1="arcsec", CUNIT2="arcsec")
    solar.update(CRVAL1=0.0, CRVAL2=0.0, CDELT1=0.6, CDELT2=0.6)
    del solar["RADESYS"]
    fits.PrimaryHDU(good, solar).writeto(root / "helioprojective.fits")
    return root


@pytest.fixture(scope="module")
def tiny_merge(tracking_db: str, tmp_path_factory: pytest.TempPathFactory, survey: Path):
    """A merge run of 2 cutouts (32 px, half overlap): a feature step that wrongly runs is quick."""
    from astrocurate.stages.cutting_out.run import CutoutOptions, make_cutouts
    from astrocurate.stages.merge_cutouts.run import merge_cutouts

    work = tmp_path_factory.mktemp("tiny")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", tracking_db)
        patch.setenv("MLFLOW_EXPERIMENT_NAME", f"tiny-{uuid.uuid4().hex[:12]}")
        patch.setenv("ASTROCURATE_DATA_DIR", str(work / "outputs"))
        cut = make_cutouts(survey, work / "outputs", CutoutOptions(32, 0.5), workers=1)
        return merge_cutouts([cut.run_id])


@pytest.fixture
def ctx(store: Path, survey: Path, curation_pipeline, bad_fits: Path, tiny_merge) -> Context:
    context = Context(store, survey, curation_pipeline, bad_fits, tiny_merge)
    yield context
    for undo in reversed(context.undo):
        undo()


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def _run_without_dac_override(argv: list[str]) -> tuple[int, str, str]:
    """Run ``astrocurate ARGV`` as root without CAP_DAC_OVERRIDE: permission bits deny."""
    command = [*WITHOUT_DAC_OVERRIDE, sys.executable, "-m", "astrocurate", *argv]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    return result.returncode, result.stdout, result.stderr


def _check(
    capsys, ctx: Context, argv: list[str], status: int, names: str, roots=(), child=False
) -> str:
    """Run ``argv`` and check the status, the single error line and that nothing was written.

    ``child``: run it in a child process without CAP_DAC_OVERRIDE (see ``needs``).
    """
    watched = [
        ctx.work,
        ctx.pipeline.clustering_dir.parents[1],
        ctx.tiny_merge.output_dir.parents[1],
        *roots,
    ]
    before = {root: _files(root) for root in watched}
    runs_before = {r.run_id for r in find_runs(include_unfinished=True)}
    capsys.readouterr()
    if child:
        got, out, err = _run_without_dac_override(argv)
    elif status == 2:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        got = exit_info.value.code
        out, err = capsys.readouterr()
    else:
        got = main(argv)
        out, err = capsys.readouterr()
    lines = [
        line
        for line in err.splitlines()
        if line.strip() and (": error: " in line or not LOG_LINE.match(line))
    ]
    assert got == status, err
    errors = [line for line in lines if ": error: " in line]
    assert len(errors) == 1, err
    error = errors[0]
    if status == 1:
        assert lines == [error], err  # one line, no traceback
        assert error.startswith(f"astrocurate {argv[0]}: error: "), err
        assert out == "", out
    else:
        assert lines[-1] == error, err  # argparse: usage, then the error
    assert names in error, error
    for root, files in before.items():
        assert _files(root) == files, f"{argv[0]} left files under {root}"
    # A FAILED run is an honest record; a RUNNING or FINISHED one is not.
    left = [
        r
        for r in find_runs(include_unfinished=True)
        if r.run_id not in runs_before and r.status != "FAILED"
    ]
    assert not left, f"{argv[0]} left runs {[(r.step, r.status) for r in left]}: {error}"
    return error


def cutouts(ctx: Context, *extra: str, mosaics=None, output=None, window="16") -> list[str]:
    return [
        "cutouts",
        "--mosaics_path", str(mosaics or ctx.survey),
        "--output_path", str(output or ctx.outputs),
        "--window_size", window,
        "--workers", "1",
        *extra,
    ]  # fmt: skip


def sample(ctx: Context, *extra: str, clustering=None, n="10") -> list[str]:
    cid = clustering if clustering is not None else ctx.pipeline.clustering_id
    return ["sample", "--clustering-id", cid, "--num-samples", n, "--no-report", *extra]


def prepare(ctx: Context, config: Path, *extra: str, features=None) -> list[str]:
    fid = features if features is not None else ctx.pipeline.features.run_id
    return ["clustering-prepare", "--features-id", fid, "--config_file", str(config), *extra]


def _config(ctx: Context, **changes) -> Path:
    data = yaml.safe_load(CONFIG.read_text())
    data.update(changes)
    path = ctx.work / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _empty_dir(ctx: Context) -> Path:
    path = ctx.work / "empty"
    path.mkdir()
    return path


def _non_fits_dir(ctx: Context) -> Path:
    path = ctx.work / "notfits"
    path.mkdir()
    (path / "readme.txt").write_text("not a mosaic\n")
    (path / "image.png").write_bytes(b"\x89PNG\r\n")
    return path


def _file_as_output(ctx: Context) -> Path:
    path = ctx.work / "afile"
    path.write_text("x")
    return path


def _cutout_ids(ctx: Context) -> list[str]:
    from astrocurate.tracking import get_run

    return get_run(ctx.pipeline.merged.run_id).input_run_ids


def _prepared_clustering(ctx: Context) -> str:
    """A clustering run that is prepared (step 4a) but not run, in the test's experiment."""
    from astrocurate.stages.clustering.run import ClusteringConfig, prepare_clustering
    from curation_pipeline import CONFIG as PIPELINE_CONFIG

    config = ClusteringConfig.from_mapping({**PIPELINE_CONFIG, "n_iters": [3, 3]})
    return prepare_clustering(ctx.pipeline.features.run_id, config, force=True).run_id


def _short_features(ctx: Context) -> str:
    """A feature run whose matrix has fewer rows than its merge's manifest."""
    from curation_pipeline import feature_run, features_from_manifest

    X = features_from_manifest(ctx.pipeline.manifest)[:-7]  # noqa: N806
    return feature_run(ctx.pipeline.merged.run_id, X).run_id


def _survey_of(ctx: Context, *names: str) -> Path:
    """A survey directory holding copies of the named files of ``bad_fits``."""
    path = ctx.work / "mosaics"
    path.mkdir(exist_ok=True)
    for name in names:
        shutil.copy(ctx.fits_files / name, path / name)
    return path


def _only_bad(ctx: Context, name: str) -> Path:
    """A survey whose only file is the bad FITS file ``name``; its name must be in the error."""
    ctx.expect.append(name)
    return _survey_of(ctx, name)


def _dangling_link(ctx: Context) -> Path:
    link = ctx.work / "link"
    link.symlink_to(ctx.work / "gone")
    return link


def _dangling_fits_link(ctx: Context) -> Path:
    folder = ctx.work / "links"
    folder.mkdir()
    (folder / "m.fits").symlink_to(ctx.work / "gone.fits")
    return folder


def _no_permission(ctx: Context, path: Path) -> Path:
    """Take every permission from ``path`` until the case ends."""
    mode = path.stat().st_mode
    path.chmod(0)
    ctx.undo.append(lambda: path.chmod(mode))
    return path


def _unreadable_survey(ctx: Context) -> Path:
    return _no_permission(ctx, _survey_of(ctx, "good.fits"))


def _unreadable_mosaic(ctx: Context) -> Path:
    survey = _survey_of(ctx, "good.fits")
    _no_permission(ctx, survey / "good.fits")
    ctx.expect.append("good.fits")
    return survey


def _read_only_dir(ctx: Context) -> Path:
    path = ctx.work / "read-only"
    path.mkdir()
    mode = path.stat().st_mode
    path.chmod(0o555)
    ctx.undo.append(lambda: path.chmod(mode))
    return path


def _moved(ctx: Context, run_id: str, delete: bool = False) -> str:
    """Move (or delete) a finished run's output directory; the error must name both.

    A moved directory of the shared pipeline is put back when the case ends.
    """
    directory = get_run(run_id).output_dir
    ctx.expect += [run_id, str(directory)]
    if delete:
        shutil.rmtree(directory)
        return run_id
    aside = ctx.work / f"moved-{run_id}"
    shutil.move(directory, aside)
    ctx.undo.append(lambda: shutil.move(aside, directory))
    return run_id


def _own_merge(ctx: Context) -> str:
    """A merge run of one of the pipeline's cutout runs, written under the working directory."""
    from astrocurate.stages.merge_cutouts.run import merge_cutouts

    return merge_cutouts(_cutout_ids(ctx)[:1], output_path=ctx.outputs, force=True).run_id


def _own_features(ctx: Context) -> str:
    """A feature run of the pipeline's merge (its matrix), written under the working directory."""
    from curation_pipeline import feature_run, features_from_manifest

    return feature_run(
        ctx.pipeline.merged.run_id, features_from_manifest(ctx.pipeline.manifest)
    ).run_id


def _ended_run(ctx: Context, step: str, exc: BaseException) -> str:
    """A ``step`` run that ended with ``exc`` (FAILED, or KILLED for an interrupt)."""
    from astrocurate.tracking import tracked_step

    try:
        with tracked_step(step, {"case": type(exc).__name__}, force=True) as run:
            raise exc
    except BaseException as caught:  # the exception raised just above
        assert caught is exc
    ctx.expect.append(run.run_id)
    return run.run_id


def _running_run(ctx: Context, step: str) -> str:
    """A ``step`` run recorded as RUNNING whose process is gone (killed without a trace)."""
    from astrocurate.tracking import client, create_run_record, experiment_id

    mlflow = client()
    run_id = create_run_record(mlflow, experiment_id(mlflow, create=True), step, "gone", [])
    ctx.expect.append(run_id)
    return run_id


def _failed(step: str) -> Callable[[Context], str]:
    return lambda c: _ended_run(c, step, RuntimeError("the step crashed"))


def _other_arch_weights(ctx: Context) -> Path:
    """A state dict of another architecture (a small MLP) saved as a ``.pt`` file."""
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    path = ctx.work / "mlp.pt"
    torch.save(model.state_dict(), path)
    return path


def features(ctx: Context, *extra: str, merged=None) -> list[str]:
    """``features`` of the tiny merge on the CPU, plus ``extra``."""
    mid = merged if merged is not None else ctx.tiny_merge.run_id
    return ["features", "--merged-cutouts-id", mid, "--device", "cpu", *extra]


def survey_cmd(ctx: Context, *extra: str) -> list[str]:
    return ["make-survey", str(ctx.work / "made"), "--mosaics", "1", "--size", "64", *extra]


def _named(ctx: Context, path: Path) -> str:
    """``path`` as an argument that the error must name."""
    ctx.expect.append(str(path))
    return str(path)


def _long_features(ctx: Context) -> str:
    """A feature run whose matrix has more rows than its merge's manifest."""
    from curation_pipeline import feature_run, features_from_manifest

    X = features_from_manifest(ctx.pipeline.manifest)  # noqa: N806
    return feature_run(ctx.pipeline.merged.run_id, np.vstack([X, X[:5]])).run_id


def _survey_with_bad_rms_map(ctx: Context, kind: str) -> Path:
    """A copy of the survey whose first rms map has another shape or another WCS."""
    copy = ctx.work / f"survey-bad-rms-{kind}"
    shutil.copytree(ctx.survey, copy)
    path = sorted(copy.rglob("mosaic.rms.fits"))[0]
    data, header = fits.getdata(path, header=True)
    if kind == "shape":
        data = data[:40]
    else:
        header["CRVAL2"] += 0.01
    fits.writeto(path, data, header, overwrite=True)
    return copy


def _catalogue_without_positions(ctx: Context) -> str:
    path = ctx.work / "sources.csv"
    path.write_text("Source_id,Total_flux,Maj\n0,0.01,0.002\n")
    return str(path)


# Each case: (id, build argv from the context, exit status, text the error must contain).
Case = tuple[str, Callable[[Context], list[str]], int, str]

CASES = [
    # --- malformed flags (argparse usage errors: status 2)
    ("cutouts-window-text", lambda c: cutouts(c, window="big"), 2, "--window_size"),
    ("cutouts-overlap-text", lambda c: cutouts(c, "--overlap", "half"), 2, "--overlap"),
    ("cutouts-store-choice", lambda c: cutouts(c, "--store", "cloud"), 2, "--store"),
    ("cutouts-unknown-flag", lambda c: cutouts(c, "--windowsize", "3"), 2, "--windowsize"),
    ("cutouts-workers-text", lambda c: cutouts(c, "--workers", "many"), 2, "--workers"),
    ("sample-num-samples-0", lambda c: sample(c, n="0"), 2, "--num-samples"),
    ("sample-num-samples-neg", lambda c: sample(c, n="-3"), 2, "--num-samples"),
    ("sample-num-samples-text", lambda c: sample(c, n="abc"), 2, "--num-samples"),
    ("sample-strategy", lambda c: sample(c, "--strategy", "x"), 2, "--strategy"),
    ("sample-export-format", lambda c: sample(c, "--export", "tiff"), 2, "--export"),
    ("sample-level-0", lambda c: sample(c, "--level", "0"), 2, "--level"),
    ("sample-baseline", lambda c: sample(c, "--baseline", "best"), 2, "--baseline"),
    (
        "features-precision",
        lambda c: ["features", "--merged-cutouts-id", ABSENT_ID, "--precision", "fp8"],
        2,
        "--precision",
    ),
    ("verify-workers-0", lambda c: ["verify", ABSENT_ID, "--workers", "0"], 2, "--workers"),
    ("clustering-run-level-text", lambda c: ["clustering-run", "d", "--level", "x"], 2, "--level"),
    # --- flag values argparse accepts but the step rejects (status 1)
    ("cutouts-overlap-1.5", lambda c: cutouts(c, "--overlap", "1.5"), 1, "--overlap"),
    ("cutouts-overlap-neg", lambda c: cutouts(c, "--overlap", "-0.1"), 1, "--overlap"),
    ("cutouts-window-0", lambda c: cutouts(c, window="0"), 1, "--window_size"),
    ("cutouts-window-neg", lambda c: cutouts(c, window="-16"), 1, "--window_size"),
    ("cutouts-nan-fraction", lambda c: cutouts(c, "--max-nan-fraction", "2"), 1, "nan"),
    ("cutouts-workers-0", lambda c: cutouts(c, "--workers", "0"), 1, "--workers"),
    ("cutouts-shard-text", lambda c: cutouts(c, "--shard", "first"), 1, "--shard"),
    ("cutouts-shard-range", lambda c: cutouts(c, "--shard", "3/2"), 1, "--shard"),
    ("cutouts-shard-zero-n", lambda c: cutouts(c, "--shard", "0/0"), 1, "--shard"),
    ("cutouts-slurm-array-0", lambda c: cutouts(c, "--slurm-array", "0"), 1, "--slurm-array"),
    ("find-run-param", lambda c: ["find-run", "--run-name", "x", "--param", "k"], 1, "--param"),
    # --- run IDs
    (
        "merge-placeholder",
        lambda c: ["merge", "--cutouts-id", "CUTOUTS_RUN_ID_64"],
        1,
        "$CUTOUTS_RUN_ID_64",
    ),
    ("merge-absent", lambda c: ["merge", "--cutouts-id", ABSENT_ID], 1, ABSENT_ID),
    (
        "merge-clustering-id",
        lambda c: ["merge", "--cutouts-id", c.pipeline.clustering_id],
        1,
        "expected a 'cutting_out' run",
    ),
    ("merge-empty-id", lambda c: ["merge", "--cutouts-id", ""], 1, "--cutouts-id"),
    (
        "features-placeholder",
        lambda c: ["features", "--merged-cutouts-id", "MERGED_CUTOUTS_RUN_ID"],
        1,
        "$MERGED_CUTOUTS_RUN_ID",
    ),
    ("features-absent", lambda c: ["features", "--merged-cutouts-id", ABSENT_ID], 1, ABSENT_ID),
    (
        "features-wrong-step",
        lambda c: ["features", "--merged-cutouts-id", c.pipeline.features.run_id],
        1,
        "expected a 'merge_cutouts' run",
    ),
    ("prepare-absent", lambda c: prepare(c, CONFIG, features=ABSENT_ID), 1, ABSENT_ID),
    (
        "prepare-wrong-step",
        lambda c: prepare(c, CONFIG, features=c.pipeline.merged.run_id),
        1,
        "expected a 'feature_extraction' run",
    ),
    (
        "sample-placeholder",
        lambda c: sample(c, clustering="CLUSTERING_RUN_ID"),
        1,
        "$CLUSTERING_RUN_ID",
    ),
    ("sample-absent", lambda c: sample(c, clustering=ABSENT_ID), 1, ABSENT_ID),
    (
        "sample-features-id",
        lambda c: sample(c, clustering=c.pipeline.features.run_id),
        1,
        "expected a 'clustering' run",
    ),
    (
        "sample-unfinished",
        lambda c: sample(c, clustering=_prepared_clustering(c)),
        1,
        "has not been run",
    ),
    (
        "report-clustering-id",
        lambda c: ["report", c.pipeline.clustering_id],
        1,
        "expected a 'curated_sampling' run",
    ),
    ("verify-absent", lambda c: ["verify", ABSENT_ID], 1, ABSENT_ID),
    ("verify-placeholder", lambda c: ["verify", "RUN_ID"], 1, "$RUN_ID"),
    # --- directories and paths
    (
        "cutouts-mosaics-missing",
        lambda c: cutouts(c, mosaics=c.work / "nowhere"),
        1,
        "--mosaics_path",
    ),
    (
        "cutouts-mosaics-empty",
        lambda c: cutouts(c, mosaics=_empty_dir(c)),
        1,
        "--mosaics_path",
    ),
    (
        "cutouts-mosaics-not-fits",
        lambda c: cutouts(c, mosaics=_non_fits_dir(c)),
        1,
        "--mosaics_path",
    ),
    (
        "cutouts-output-is-file",
        lambda c: cutouts(c, output=_file_as_output(c)),
        1,
        "--output_path",
    ),
    (
        "cutouts-output-in-mosaics",
        lambda c: cutouts(c, output=c.survey / "out"),
        1,
        "inside --mosaics_path",
    ),
    (
        "sample-output-is-file",
        lambda c: sample(c, "--output_path", str(_file_as_output(c))),
        1,
        "afile",
    ),
    (
        "merge-output-is-file",
        lambda c: [
            "merge",
            "--cutouts-id",
            *_cutout_ids(c),
            "--output_path",
            str(_file_as_output(c)),
        ],
        1,
        "afile",
    ),
    (
        "prepare-output-is-file",
        lambda c: prepare(c, CONFIG, "--output_path", str(_file_as_output(c))),
        1,
        "afile",
    ),
    (
        "features-output-is-file",
        lambda c: features(c, "--output_path", str(_file_as_output(c))),
        1,
        "afile",
    ),
    (
        "clustering-status-missing",
        lambda c: ["clustering-status", str(c.work / "nowhere")],
        1,
        "nowhere",
    ),
    (
        "clustering-run-missing",
        lambda c: ["clustering-run", str(c.work / "nowhere")],
        1,
        "nowhere",
    ),
    # --- features matrix and clustering configs
    (
        "prepare-short-features",
        lambda c: prepare(c, CONFIG, features=_short_features(c)),
        1,
        "rows",
    ),
    ("prepare-config-missing", lambda c: prepare(c, c.work / "none.yaml"), 1, "none.yaml"),
    (
        "prepare-config-unknown-key",
        lambda c: prepare(c, _config(c, n_clusterz=[4, 2])),
        1,
        "n_clusterz",
    ),
    (
        "prepare-config-list-length",
        lambda c: prepare(c, _config(c, n_iters=[5])),
        1,
        "n_iters",
    ),
    (
        "prepare-config-zero",
        lambda c: prepare(c, _config(c, n_clusters=[0, 8])),
        1,
        "n_clusters",
    ),
    (
        "prepare-config-negative-iters",
        lambda c: prepare(c, _config(c, n_iters=[-1, 5])),
        1,
        "n_iters",
    ),
    (
        "prepare-config-negative",
        lambda c: prepare(c, _config(c, sample_size=[-1, 4])),
        1,
        "sample_size",
    ),
    (
        "prepare-too-many-clusters",
        lambda c: prepare(c, _config(c, n_clusters=[10**6, 8])),
        1,
        "n_clusters",
    ),
    ("prepare-override-unknown", lambda c: prepare(c, CONFIG, "n_clusterz=4"), 1, "n_clusterz"),
    ("prepare-override-syntax", lambda c: prepare(c, CONFIG, "n_iters"), 1, "n_iters"),
    (
        "prepare-long-features",
        lambda c: prepare(c, CONFIG, features=_long_features(c)),
        1,
        "rows",
    ),
    # --- mosaics directories that cannot be listed (the chmod cases need a non-root user)
    (
        "cutouts-mosaics-is-file",
        lambda c: cutouts(c, mosaics=c.fits_files / "good.fits"),
        1,
        "not a directory",
    ),
    (
        "cutouts-mosaics-dangling-link",
        lambda c: cutouts(c, mosaics=_dangling_link(c)),
        1,
        "--mosaics_path: mosaics path",
    ),
    (
        "cutouts-only-a-dangling-fits-link",
        lambda c: cutouts(c, mosaics=_dangling_fits_link(c)),
        1,
        "broken symbolic link to",
    ),
    (
        "cutouts-mosaics-unreadable",
        lambda c: cutouts(c, mosaics=_unreadable_survey(c)),
        1,
        "--mosaics_path",
    ),
    (
        "cutouts-mosaic-unreadable",
        lambda c: cutouts(c, mosaics=_unreadable_mosaic(c)),
        1,
        "--mosaics_path",
    ),
    (
        "cutouts-mosaics-fits-named-text",
        lambda c: cutouts(c, mosaics=_only_bad(c, "text.fits")),
        1,
        "not a FITS file",
    ),
    # --- a survey whose every file is bad (a survey with good files skips them: see below)
    *[
        (
            f"cutouts-only-{name.removesuffix('.fits')}",
            lambda c, name=name: cutouts(c, mosaics=_only_bad(c, name)),
            1,
            problem,
        )
        for name, problem in BAD_FITS.items()
        if name != "text.fits"
    ],
    # --- output paths: under a file, unwritable, inside an input
    (
        "cutouts-output-under-file",
        lambda c: cutouts(c, output=_file_as_output(c) / "sub"),
        1,
        "--output_path",
    ),
    (
        "cutouts-output-unwritable",
        lambda c: cutouts(c, output=_read_only_dir(c) / "out"),
        1,
        "--output_path",
    ),
    (
        "sample-output-under-file",
        lambda c: sample(c, "--output_path", str(_file_as_output(c) / "sub")),
        1,
        "afile",
    ),
    (
        "features-output-under-file",
        lambda c: features(c, "--output_path", str(_file_as_output(c) / "sub")),
        1,
        "afile",
    ),
    (
        "features-output-unwritable",
        lambda c: features(c, "--output_path", str(_read_only_dir(c))),
        1,
        "read-only",
    ),
    (
        "features-output-in-merge-run",
        lambda c: features(c, "--output_path", str(c.tiny_merge.output_dir)),
        1,
        "--output_path",
    ),
    (
        "merge-output-in-cutouts-run",
        lambda c: [
            "merge",
            "--cutouts-id",
            _cutout_ids(c)[0],
            "--output_path",
            str(get_run(_cutout_ids(c)[0]).output_dir / "m"),
        ],
        1,
        "--output_path",
    ),
    (
        "prepare-output-in-features-run",
        lambda c: prepare(c, CONFIG, "--output_path", str(c.pipeline.features.output_dir)),
        1,
        "--output_path",
    ),
    (
        "sample-output-in-clustering-run",
        lambda c: sample(c, "--output_path", str(c.pipeline.clustering_dir)),
        1,
        "--output_path",
    ),
    # --- earlier runs whose output directory was moved or deleted
    (
        "merge-cutouts-moved",
        lambda c: ["merge", "--cutouts-id", _moved(c, _cutout_ids(c)[0])],
        1,
        "missing",
    ),
    (
        "features-merge-deleted",
        lambda c: features(c, merged=_moved(c, _own_merge(c), delete=True)),
        1,
        "missing",
    ),
    (
        "prepare-features-deleted",
        lambda c: prepare(c, CONFIG, features=_moved(c, _own_features(c), delete=True)),
        1,
        "missing",
    ),
    (
        "sample-clustering-moved",
        lambda c: sample(c, clustering=_moved(c, c.pipeline.clustering_id)),
        1,
        "missing",
    ),
    # --- input runs that failed, were killed or are still recorded as running
    (
        "merge-cutouts-failed",
        lambda c: ["merge", "--cutouts-id", _failed("cutting_out")(c)],
        1,
        "FAILED",
    ),
    (
        "merge-cutouts-killed",
        lambda c: ["merge", "--cutouts-id", _ended_run(c, "cutting_out", KeyboardInterrupt())],
        1,
        "KILLED",
    ),
    (
        "merge-cutouts-running",
        lambda c: ["merge", "--cutouts-id", _running_run(c, "cutting_out")],
        1,
        "RUNNING",
    ),
    (
        "features-merge-failed",
        lambda c: features(c, merged=_failed("merge_cutouts")(c)),
        1,
        "FAILED",
    ),
    (
        "prepare-features-failed",
        lambda c: prepare(c, CONFIG, features=_failed("feature_extraction")(c)),
        1,
        "FAILED",
    ),
    (
        "sample-clustering-failed",
        lambda c: sample(c, clustering=_failed("clustering")(c)),
        1,
        "FAILED",
    ),
    ("report-sampling-failed", lambda c: ["report", _failed("curated_sampling")(c)], 1, "FAILED"),
    # --- feature flags argparse accepts but the step refuses (checked before any run)
    ("features-model-unknown", lambda c: features(c, "--model", "resnet9000"), 1, "resnet9000"),
    (
        "features-weights-missing",
        lambda c: features(c, "--model", "timm:resnet18", "--weights", str(c.work / "none.pt")),
        1,
        "none.pt",
    ),
    (
        "features-weights-other-arch",
        lambda c: features(c, "--model", "timm:resnet18", "--weights", str(_other_arch_weights(c))),
        1,
        "another architecture",
    ),
    ("features-arch-not-ssl", lambda c: features(c, "--arch", "resnet50"), 1, "arch"),
    ("features-pooling-unknown", lambda c: features(c, "--pooling", "sideways"), 1, "sideways"),
    ("features-resize-0", lambda c: features(c, "--resize", "0"), 1, "--resize"),
    ("features-resize-neg", lambda c: features(c, "--resize", "-32"), 1, "--resize"),
    ("features-normalization-unknown", lambda c: features(c, "--normalization", "log"), 1, "log"),
    (
        "features-low-percentile-neg",
        lambda c: features(c, "--low-percentile", "-5"),
        1,
        "percentile",
    ),
    (
        "features-high-percentile-101",
        lambda c: features(c, "--high-percentile", "101"),
        1,
        "percentile",
    ),
    (
        "features-percentiles-crossed",
        lambda c: features(c, "--low-percentile", "90", "--high-percentile", "10"),
        1,
        "percentile",
    ),
    ("features-asinh-softening-0", lambda c: features(c, "--asinh-softening", "0"), 1, "softening"),
    (
        "features-sigma-neg",
        lambda c: features(c, "--normalization", "sigma_clip", "--sigma", "-3"),
        1,
        "sigma",
    ),
    (
        "features-norm-std-0",
        lambda c: features(c, "--normalization", "fixed", "--norm-std", "0"),
        1,
        "std",
    ),
    ("features-batch-size-0", lambda c: features(c, "--batch-size", "0"), 1, "--batch-size"),
    ("features-shard-rows-0", lambda c: features(c, "--shard-rows", "0"), 1, "--shard-rows"),
    ("features-workers-neg", lambda c: features(c, "--workers", "-2"), 1, "--workers"),
    ("features-device-unknown", lambda c: features(c, "--device", "tpu"), 1, "tpu"),
    ("features-shard-text", lambda c: features(c, "--shard", "first"), 1, "--shard"),
    ("features-shard-range", lambda c: features(c, "--shard", "2/2"), 1, "--shard"),
    ("features-shard-force", lambda c: features(c, "--shard", "0/2", "--force"), 1, "--force"),
    ("features-finish-shard", lambda c: features(c, "--finish", "--shard", "0/2"), 1, "--shard"),
    ("features-slurm-array-0", lambda c: features(c, "--slurm-array", "0"), 1, "--slurm-array"),
    ("features-finish-absent", lambda c: ["features-finish", ABSENT_ID], 1, ABSENT_ID),
    # --- other flags argparse accepts but the command refuses
    ("cutouts-nan-fraction-neg", lambda c: cutouts(c, "--max-nan-fraction", "-0.1"), 1, "nan"),
    ("cutouts-slurm-array-neg", lambda c: cutouts(c, "--slurm-array", "-4"), 1, "--slurm-array"),
    (
        "cutouts-slurm-array-with-shard",
        lambda c: cutouts(c, "--slurm-array", "2", "--shard", "0/2"),
        1,
        "--shard",
    ),
    (
        "cutouts-slurm-time",
        lambda c: cutouts(c, "--slurm-array", "2", "--slurm_time", "soon"),
        1,
        "soon",
    ),
    ("prepare-slurm-time", lambda c: prepare(c, CONFIG, "--slurm_time", "soon"), 1, "soon"),
    ("make-survey-mosaics-0", lambda c: survey_cmd(c, "--mosaics", "0"), 1, "--mosaics 0"),
    ("make-survey-size-0", lambda c: survey_cmd(c, "--size", "0"), 1, "--size 0"),
    ("make-survey-size-neg", lambda c: survey_cmd(c, "--size", "-64"), 1, "--size -64"),
    ("make-survey-noise-neg", lambda c: survey_cmd(c, "--noise-rms", "-1"), 1, "--noise-rms"),
    ("make-survey-seed-neg", lambda c: survey_cmd(c, "--seed", "-1"), 1, "--seed"),
    (
        "make-survey-fractions-syntax",
        lambda c: survey_cmd(c, "--class-fractions", "point"),
        1,
        "--class-fractions",
    ),
    (
        "make-survey-fractions-text",
        lambda c: survey_cmd(c, "--class-fractions", "point=most"),
        1,
        "--class-fractions",
    ),
    (
        "make-survey-fractions-class",
        lambda c: survey_cmd(c, "--class-fractions", "quasar=1"),
        1,
        "--class-fractions has unknown class 'quasar'",
    ),
    (
        "make-survey-fractions-neg",
        lambda c: survey_cmd(c, "--class-fractions", "point=-1"),
        1,
        "point",
    ),
    (
        "make-survey-output-is-file",
        lambda c: ["make-survey", str(_file_as_output(c)), "--mosaics", "1", "--size", "64"],
        1,
        "afile exists and is not a directory",
    ),
    (
        "demo-mosaics-missing",
        lambda c: ["demo", "--workdir", str(c.work / "demo"), "--mosaics", str(c.work / "nowhere")],
        1,
        "--mosaics: mosaics path",
    ),
    (
        "clustering-run-level-0",
        lambda c: ["clustering-run", str(c.pipeline.clustering_dir), "--level", "0"],
        1,
        "--level",
    ),
    (
        "clustering-run-level-deep",
        lambda c: ["clustering-run", str(c.pipeline.clustering_dir), "--level", "9"],
        1,
        "--level",
    ),
    (
        "clustering-status-not-clustering",
        lambda c: ["clustering-status", _named(c, c.survey)],
        1,
        "",
    ),
    ("sample-level-deep", lambda c: sample(c, "--level", "9"), 1, "--level"),
    ("sample-seed-neg", lambda c: sample(c, "--seed", "-1"), 1, "--seed"),
    ("find-run-step-unknown", lambda c: ["find-run", "--run-name", "cutting"], 1, "cutting"),
    (
        "find-run-filter-no-value",
        lambda c: ["find-run", "--run-name", "cutting_out", "--window_size"],
        1,
        "--window_size",
    ),
    (
        "find-run-cutout-ids",
        lambda c: ["find-run", "--run-name", "merge_cutouts", "--cutout-ids", "[abc,"],
        1,
        "--cutout-ids",
    ),
    (
        "report-features-id",
        lambda c: ["report", c.pipeline.features.run_id],
        1,
        "expected a 'curated_sampling' run",
    ),
    ("report-placeholder", lambda c: ["report", "SAMPLING_RUN_ID"], 1, "$SAMPLING_RUN_ID"),
    (
        "sample-dedup-threshold-out-of-range",
        lambda c: sample(c, "--dedup-threshold", "1.5"),
        1,
        "--dedup-threshold",
    ),
    (
        "sample-outlier-share-out-of-range",
        lambda c: sample(c, "--outliers", "list", "--outlier-share", "0.9"),
        1,
        "--outlier-share",
    ),
    (
        "sample-min-peak-snr-not-positive",
        lambda c: sample(c, "--min-peak-snr", "0"),
        1,
        "--min-peak-snr",
    ),
    (
        "sample-max-noise-ratio-below-one",
        lambda c: sample(c, "--max-noise-ratio", "0.5"),
        1,
        "--max-noise-ratio",
    ),
    ("sample-steer-by-unknown", lambda c: sample(c, "--steer-by", "colour"), 1, "--steer-by"),
    (
        "sample-steer-bins-decreasing",
        lambda c: sample(c, "--steer-by", "n_sources", "--steer-bins", "3,2"),
        1,
        "--steer-bins",
    ),
    (
        "sample-steer-by-without-catalogue",
        lambda c: sample(c, "--steer-by", "max_size_arcsec"),
        1,
        "no catalogue values",
    ),
    (
        "merge-max-noise-ratio-below-one",
        lambda c: ["merge", "--cutouts-id", ABSENT_ID, "--max-noise-ratio", "0.5"],
        1,
        "--max-noise-ratio",
    ),
    (
        "merge-min-peak-snr-negative",
        lambda c: ["merge", "--cutouts-id", ABSENT_ID, "--min-peak-snr", "-1"],
        1,
        "--min-peak-snr",
    ),
    (
        "cutouts-rms-maps-unknown-placeholder",
        lambda c: cutouts(c, "--rms-maps", "{dir}/{field}.rms.fits"),
        1,
        "--rms-maps",
    ),
    (
        "cutouts-rms-map-other-shape",
        lambda c: cutouts(c, mosaics=_survey_with_bad_rms_map(c, "shape")),
        1,
        "expected 64x64 like its mosaic",
    ),
    (
        "cutouts-rms-map-other-wcs",
        lambda c: cutouts(c, mosaics=_survey_with_bad_rms_map(c, "wcs")),
        1,
        "another WCS than its mosaic",
    ),
    (
        "cutouts-sources-id-unknown",
        lambda c: cutouts(c, "--sources-id", ABSENT_ID),
        1,
        "--sources-id",
    ),
    (
        "cutouts-catalogue-missing",
        lambda c: cutouts(c, "--catalogue", str(c.work / "nowhere.srl.fits")),
        1,
        "nowhere.srl.fits",
    ),
    (
        "cutouts-catalogue-without-ra-dec",
        lambda c: cutouts(c, "--catalogue", _catalogue_without_positions(c)),
        1,
        "RA/DEC",
    ),
    (
        "evaluate-placeholder",
        lambda c: ["evaluate", "--sampling-id", "SAMPLING_RUN_ID"],
        1,
        "$SAMPLING_RUN_ID",
    ),
    (
        "evaluate-clustering-id",
        lambda c: ["evaluate", "--sampling-id", c.pipeline.clustering_id],
        1,
        "expected a 'curated_sampling' run",
    ),
    (
        "evaluate-unknown-id",
        lambda c: ["evaluate", "--sampling-id", ABSENT_ID],
        1,
        ABSENT_ID,
    ),
    (
        "evaluate-shard-out-of-range",
        lambda c: ["evaluate", "--sampling-id", ABSENT_ID, "--shard", "2/2"],
        1,
        "--shard",
    ),
]

# --- malformed values of every flag, generated from the parsers: each subcommand's
# arguments (BASE) plus one flag with a value of the wrong type or outside its choices.

#: Valid arguments of each subcommand, to which a malformed flag is added.
BASE: dict[str, Callable[[Context], list[str]]] = {
    "find-run": lambda c: ["--run-name", "cutting_out"],
    "cutouts": lambda c: cutouts(c)[1:],
    "merge": lambda c: ["--cutouts-id", ABSENT_ID],
    "find-sources": lambda c: ["--mosaics_path", str(c.survey)],
    "make-survey": lambda c: survey_cmd(c)[1:],
    "demo": lambda c: ["--workdir", str(c.work / "demo")],
    "features": lambda c: features(c)[1:],
    "features-finish": lambda c: [ABSENT_ID],
    "backbones": lambda c: [],
    "clustering-prepare": lambda c: prepare(c, CONFIG)[1:],
    "clustering-run": lambda c: [str(c.pipeline.clustering_dir)],
    "clustering-status": lambda c: [str(c.pipeline.clustering_dir)],
    "sample": lambda c: sample(c)[1:],
    "report": lambda c: [ABSENT_ID],
    "evaluate": lambda c: ["--sampling-id", ABSENT_ID],
    "verify": lambda c: [ABSENT_ID],
}
NOT_A_NUMBER = "many"
NOT_A_CHOICE = "bogus"


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _flag_cases() -> list[Case]:
    """One usage error per value-taking flag with a type or choices, per subcommand.

    Also, per subcommand: no arguments at all (when some are required), an unknown flag,
    and a value given to a flag that takes none.
    """
    cases: list[Case] = []
    for command, parser in _subparsers().items():
        base = BASE.get(command, lambda c: [])
        required = [a for a in parser._actions if a.required]
        if required:
            first = required[0]
            named = (
                first.option_strings[0] if first.option_strings else (first.metavar or first.dest)
            )
            cases.append((f"{command}-no-arguments", lambda c, n=command: [n], 2, named))
        extra = parser.get_default("accepts_extra")  # free words are filters or overrides
        cases.append(
            (
                f"{command}-no-such-flag",
                lambda c, n=command, b=base: [n, *b(c), "--no-such-flag"],
                1 if extra else 2,
                "--no-such-flag",
            )
        )
        for action in parser._actions:
            flag = action.option_strings[0] if action.option_strings else None
            if flag is None or flag in ("-h", "-q"):
                continue
            if action.nargs == 0:  # store_true, --x/--no-x: a value is a usage error
                bad = f"{action.option_strings[-1]}=yes"
                name = action.option_strings[-1]
            elif action.choices is not None:
                bad, name = [flag, NOT_A_CHOICE], flag
            elif action.type is not None:
                bad, name = [flag, NOT_A_NUMBER], flag
            else:
                continue
            argv = bad if isinstance(bad, list) else [bad]
            cases.append(
                (
                    f"{command}{flag}-malformed",
                    lambda c, n=command, b=base, a=tuple(argv): [n, *b(c), *a],
                    2,
                    name.split("=")[0],
                )
            )
    return cases


FLAG_CASES = _flag_cases()

XFAIL: dict[str, str] = {}
#: Cases that need permission bits to deny access, which they do not for root.
NEEDS_NON_ROOT = {
    "cutouts-mosaics-unreadable",
    "cutouts-mosaic-unreadable",
    "cutouts-output-unwritable",
    "features-output-unwritable",
}


def _param(case: Case):
    name, build, status, names = case
    marks = [pytest.mark.xfail(strict=True, reason=XFAIL[name])] if name in XFAIL else []
    child = name in NEEDS_NON_ROOT and not PERMISSIONS_DENY
    return pytest.param(build, status, names, child, id=name, marks=marks)


def test_every_subcommand_has_base_arguments() -> None:
    """A new subcommand needs an entry in BASE, so that its flags join the table."""
    assert set(_subparsers()) <= set(BASE)


def test_case_names_are_unique() -> None:
    names = [c[0] for c in [*CASES, *FLAG_CASES]]
    assert len(names) == len(set(names))


@pytest.mark.parametrize(
    ("build", "status", "names", "child"), [_param(c) for c in [*CASES, *FLAG_CASES]]
)
def test_bad_input(capsys, ctx: Context, build, status: int, names: str, child: bool) -> None:
    if child and not AS_UNPRIVILEGED_CHILD:
        unavailable("permission bits deny nothing here and setpriv cannot drop CAP_DAC_OVERRIDE")
    argv = build(ctx)
    # Runs a case creates while building its input (a short feature matrix, a prepared
    # clustering) are made before the snapshot, so they do not count as left behind.
    error = _check(capsys, ctx, argv, status, names, child=child)
    for text in ctx.expect:
        assert text in error, (text, error)


# --- bad FITS files that the cutouts step skips or cuts with a warning (exit 0)


def _cut(capsys, caplog, ctx: Context, mosaics: Path) -> tuple[list[str], object]:
    """Run ``cutouts`` on ``mosaics``; return its warnings and its (finished) run."""
    capsys.readouterr()
    with caplog.at_level(logging.WARNING, logger="astrocurate"):
        status = main(cutouts(ctx, mosaics=mosaics))
    out, err = capsys.readouterr()
    assert status == 0, err
    run = get_run(out.split()[-1])
    assert run.status == "FINISHED"
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING], run


def test_bad_files_among_good_ones_are_skipped_with_one_warning_each(capsys, caplog, ctx) -> None:
    survey = _survey_of(ctx, "good.fits", *BAD_FITS, *WARNED_FITS)
    warnings, run = _cut(capsys, caplog, ctx, survey)
    for name, problem in {**BAD_FITS, **WARNED_FITS}.items():
        named = [line for line in warnings if f"/{name}" in line]
        assert len(named) == 1 and problem in named[0], (name, warnings)
        if name in BAD_FITS:
            assert f"skipping {survey / name}" in named[0], named
    assert not [line for line in warnings if "good.fits" in line]
    manifest = pd.read_parquet(run.output_dir / "manifest.parquet")
    assert set(manifest["mosaic"]) == {"good", "non-celestial", "helioprojective"}
    for name in ("non-celestial", "helioprojective"):
        assert manifest.loc[manifest["mosaic"] == name, ["ra", "dec"]].isna().all().all()


@pytest.mark.parametrize("name", list(WARNED_FITS))
def test_a_readable_file_alone_is_cut_with_a_warning(capsys, caplog, ctx, name) -> None:
    """All blank or without sky coordinates: readable, so a run with a warning, not an error."""
    warnings, _ = _cut(capsys, caplog, ctx, _survey_of(ctx, name))
    named = [line for line in warnings if f"/{name}" in line]
    assert len(named) == 1 and WARNED_FITS[name] in named[0], warnings
