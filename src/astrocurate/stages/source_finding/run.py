"""Optional step: find the sources of every mosaic with PyBDSF (run name ``source_finding``).

Each mosaic under ``--mosaics_path`` (found and named as the cutouts step finds and names
them, :func:`astrocurate.io.mosaics.scan_mosaics`) is given to PyBDSF's
``process_image``, in parallel worker processes, one mosaic per process. PyBDSF writes its
source list (``write_catalog(format='fits', catalog_type='srl')``), its rms map
(``export_image(img_type='rms')``) and its log into a temporary folder of the run
directory; they are then renamed into place (:mod:`.outputs` names them) and the mosaic's
summary ``parts/<stem>.json`` is written last. A rerun after an interruption skips the
mosaics that have a summary (:func:`pending`). When every mosaic is done the summaries are
joined into ``sources.parquet`` and ``parts/`` is removed.

The beam (BMAJ, BMIN, BPA) and the frequency (RESTFRQ, RESTFREQ, FREQ or the CRVAL of a
FREQ axis) come from each mosaic's header unless ``--beam`` / ``--frequency`` give them;
all headers are read before any work, so a mosaic without them stops the run at once with
one line naming the mosaic and the keyword. A mosaic PyBDSF fails on (or that cannot be
read) gets one warning and status ``failed`` in the index; the run still finishes.

PyBDSF is an optional dependency (``pip install bdsf``, the ``sources`` extra).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from astrocurate import steps
from astrocurate.cpus import usable_cpus
from astrocurate.errors import InvalidArgumentError
from astrocurate.io import mosaics as mosaic_io
from astrocurate.io.atomic import fsync_file, write_json
from astrocurate.io.cutout_store import write_parquet_atomic
from astrocurate.launch.workers import map_in_workers
from astrocurate.stages.source_finding import outputs
from astrocurate.tracking import StepRun, default_output_root, tracked_step
from astrocurate.validation import check_int, check_real

log = logging.getLogger(__name__)

STEP = steps.SOURCE_FINDING
PARTS_DIR = "parts"
#: Header keywords holding the observing frequency in Hz, in the order they are tried
#: (a FREQ axis' CRVAL comes after them).
FREQUENCY_KEYWORDS = ("RESTFRQ", "RESTFREQ", "FREQ")
_FREQUENCY_UNITS = {"HZ": 1.0, "KHZ": 1e3, "MHZ": 1e6, "GHZ": 1e9}
#: Columns of the catalogue written for a mosaic without any source (PyBDSF writes none).
EMPTY_CATALOGUE_COLUMNS = (
    ("Source_id", "J"),
    ("Isl_id", "J"),
    ("RA", "D"),
    ("E_RA", "D"),
    ("DEC", "D"),
    ("E_DEC", "D"),
    ("Total_flux", "D"),
    ("E_Total_flux", "D"),
    ("Peak_flux", "D"),
    ("E_Peak_flux", "D"),
    ("Maj", "D"),
    ("Min", "D"),
    ("PA", "D"),
    ("S_Code", "1A"),
)


@dataclass(frozen=True)
class SourceFindingOptions:
    """Parameters of a source-finding run (validated by :func:`validate_options`).

    Attributes
    ----------
    thresh_isl : float
        Island threshold in sigma (PyBDSF ``thresh_isl``): the boundary of each island.
    thresh_pix : float
        Pixel threshold in sigma (PyBDSF ``thresh_pix``): an island needs a peak above it;
        at least ``thresh_isl``.
    rms_box : str, optional
        ``"BOX,STEP"`` in pixels, PyBDSF's ``rms_box`` for the background maps; default
        PyBDSF's own choice from the image.
    beam : str, optional
        ``"MAJ[,MIN[,PA]]"``: restoring beam FWHM in arcsec and position angle in degrees,
        used for every mosaic instead of its header's BMAJ/BMIN/BPA.
    frequency : float, optional
        Frequency in Hz used for every mosaic instead of its header's.
    workers : int, optional
        Mosaics processed in parallel; default the cores this process may use. Does not
        change the output.
    """

    thresh_isl: float = 3.0
    thresh_pix: float = 5.0
    rms_box: str | None = None
    beam: str | None = None
    frequency: float | None = None
    workers: int | None = None


@dataclass(frozen=True)
class _MosaicTask:
    index: int
    name: str
    path: str
    run_dir: str
    beam_deg: tuple[float, float, float] | None
    frequency_hz: float | None
    thresh_isl: float
    thresh_pix: float
    rms_box: tuple[int, int] | None
    ncores: int = 1
    problem: str | None = None


def validate_options(options: SourceFindingOptions) -> None:
    """Check the options, raising one :class:`InvalidArgumentError` line per problem."""
    check_real("--thresh-isl", options.thresh_isl, 0.0)
    check_real("--thresh-pix", options.thresh_pix, 0.0)
    if options.thresh_pix < options.thresh_isl:
        raise InvalidArgumentError(
            f"--thresh-pix={options.thresh_pix!r} must be >= --thresh-isl={options.thresh_isl!r}"
        )
    parse_rms_box(options.rms_box)
    parse_beam(options.beam)
    if options.frequency is not None:
        check_real("--frequency", options.frequency, 0.0)
    if options.workers is not None:
        check_int("--workers", options.workers, 1)


def parse_rms_box(text: str | None) -> tuple[int, int] | None:
    """``"BOX,STEP"`` as two pixel counts (BOX > STEP >= 1), or None when not given."""
    if text is None:
        return None
    parts = [p.strip() for p in str(text).split(",")]
    message = f"--rms-box={text!r} must be BOX,STEP in pixels with BOX > STEP >= 1, e.g. 60,15"
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise InvalidArgumentError(message)
    box, step = int(parts[0]), int(parts[1])
    if step < 1 or box <= step:
        raise InvalidArgumentError(message)
    return box, step


def parse_beam(text: str | None) -> tuple[float, float, float] | None:
    """``"MAJ[,MIN[,PA]]"`` (arcsec, arcsec, degrees) as PyBDSF's beam in degrees, or None."""
    if text is None:
        return None
    message = (
        f"--beam={text!r} must be MAJ[,MIN[,PA]]: FWHM in arcsec (MAJ >= MIN > 0) and "
        "position angle in degrees, e.g. 6 or 6,6,0"
    )
    try:
        values = [float(v) for v in str(text).split(",")]
    except ValueError:
        raise InvalidArgumentError(message) from None
    if not 1 <= len(values) <= 3 or not all(math.isfinite(v) for v in values):
        raise InvalidArgumentError(message)
    major = values[0]
    minor = values[1] if len(values) > 1 else major
    angle = values[2] if len(values) > 2 else 0.0
    if not major >= minor > 0:
        raise InvalidArgumentError(message)
    return major / 3600.0, minor / 3600.0, angle


def require_bdsf() -> None:
    """Fail in one line when PyBDSF cannot be imported, saying how to install it."""
    try:
        import bdsf  # noqa: F401
    except ImportError as exc:
        raise InvalidArgumentError(
            f"find-sources needs PyBDSF, which cannot be imported ({exc}): "
            "pip install bdsf (or pip install 'astrocurate[sources]')"
        ) from exc


def find_sources(
    mosaics_path: Path,
    options: SourceFindingOptions,
    output_path: Path | None = None,
    force: bool = False,
    progress: bool | None = None,
) -> StepRun:
    """Run PyBDSF on every mosaic under ``mosaics_path``; record one ``source_finding`` run.

    Parameters
    ----------
    mosaics_path : Path
        Directory searched recursively for FITS mosaics.
    options : SourceFindingOptions
        Thresholds, rms box, beam and frequency fallbacks, workers.
    output_path : Path, optional
        Parent directory; the run writes ``<output_path>/source_finding/<run_id>/``.
        Default :func:`astrocurate.tracking.default_output_root`.
    force : bool
        Recompute even if an identical finished run exists.
    progress : bool, optional
        Show a progress bar; default only on a terminal.

    Returns
    -------
    StepRun
        The run (``reused`` is true when an identical finished run was found).
    """
    validate_options(options)
    require_bdsf()
    mosaics_path = Path(mosaics_path).resolve()
    found = _discover(mosaics_path)
    output_root = Path(output_path).resolve() if output_path else default_output_root()
    _check_output_path(output_root, mosaics_path)
    settings = _mosaic_settings(found, options)
    workers = options.workers or usable_cpus()
    params = {
        "mosaics_path": str(mosaics_path),
        "output_path": str(output_root),
        **asdict(options),
        "workers": workers,
        "n_mosaics": len(found),
        "mosaics_digest": mosaic_io.listing_digest([m.path for m in found]),
    }
    started = time.perf_counter()
    with tracked_step(
        STEP, params, output_root=output_root, volatile_params=["workers"], force=force
    ) as run:
        if run.reused:
            log.info("%s run %s already holds these source lists", STEP, run.run_id)
            return run
        run.remove_temporaries()  # of an interrupted attempt
        if run.resumed and (run.output_dir / outputs.INDEX).is_file():
            summaries = outputs.read_index(run.output_dir).to_dict("records")
        else:
            tasks = _tasks(found, settings, run.output_dir, options, workers)
            _find_all(tasks, workers, _show_progress(progress))
            summaries = _assemble(run.output_dir, tasks)
        _log_summary(run, summaries, time.perf_counter() - started)
    return run


def _discover(mosaics_path: Path) -> list[mosaic_io.MosaicFile]:
    """Find the survey's FITS files, named as the cutouts step names them; one line if none."""
    try:
        scan = mosaic_io.scan_mosaics(mosaics_path)
    except OSError as exc:
        raise InvalidArgumentError(f"--mosaics_path: {exc}") from exc
    for path in scan.unreadable:
        log.warning("skipping %s: %s", path, mosaic_io.unreadable_reason(path))
    if not scan.mosaics:
        skipped = f"; {scan.describe_unreadable()}" if scan.unreadable else ""
        raise InvalidArgumentError(
            f"--mosaics_path: no readable FITS files (.fits, .fit, .fits.gz, .fz) under "
            f"{mosaics_path} ({scan.describe_ignored()}{skipped})"
        )
    return list(scan.mosaics)


def _check_output_path(output_root: Path, mosaics_path: Path) -> None:
    """Refuse an output inside the survey: its FITS files would be found as mosaics."""
    if output_root == mosaics_path or mosaics_path in output_root.parents:
        raise InvalidArgumentError(
            f"--output_path: {output_root} is inside --mosaics_path {mosaics_path}; "
            "choose a directory outside the survey"
        )


def _show_progress(progress: bool | None) -> bool:
    return sys.stderr.isatty() if progress is None else progress


# --------------------------------------------------------------------------- headers


@dataclass(frozen=True)
class _Settings:
    """What PyBDSF is told about one mosaic, from the options or its header."""

    beam_deg: tuple[float, float, float] | None
    frequency_hz: float | None
    problem: str | None = None


def _mosaic_settings(
    found: list[mosaic_io.MosaicFile], options: SourceFindingOptions
) -> list[_Settings]:
    """Each mosaic's beam and frequency, read before any work (one line if one is missing).

    A file that cannot be opened as a mosaic gets its problem instead (status ``failed``).
    """
    beam = parse_beam(options.beam)
    settings = []
    for mosaic in found:
        try:
            with mosaic_io.open_mosaic(mosaic) as opened:
                header = opened.header
        except mosaic_io.InvalidMosaicError as exc:
            settings.append(_Settings(None, None, str(exc)))
            continue
        settings.append(
            _Settings(
                beam or header_beam(header, mosaic.path),
                options.frequency or header_frequency(header, mosaic.path),
            )
        )
    return settings


def _tasks(
    found: list[mosaic_io.MosaicFile],
    settings: list[_Settings],
    run_dir: Path,
    options: SourceFindingOptions,
    workers: int,
) -> list[_MosaicTask]:
    """One task per mosaic; PyBDSF fits with ``workers`` processes only when alone."""
    rms_box = parse_rms_box(options.rms_box)
    thresholds = float(options.thresh_isl), float(options.thresh_pix)
    paths = [(m.name, str(m.path), str(run_dir)) for m in found]
    tasks = [
        _MosaicTask(i, *p, s.beam_deg, s.frequency_hz, *thresholds, rms_box, problem=s.problem)
        for i, (p, s) in enumerate(zip(paths, settings, strict=True))
    ]
    todo = sum(t.problem is None for t in pending(tasks))
    ncores = 1 if workers > 1 and todo > 1 else workers
    return [replace(t, ncores=ncores) for t in tasks]


def header_beam(header: Any, path: Path | str) -> tuple[float, float, float]:
    """Return the restoring beam (BMAJ, BMIN, BPA in degrees) of a mosaic's header.

    BPA defaults to 0. Raises a one-line :class:`InvalidArgumentError` naming the mosaic
    and the missing keyword, and ``--beam``.
    """
    for key in ("BMAJ", "BMIN"):
        value = header.get(key)
        if not _positive(value):
            found = "no" if value is None else f"a bad ({value!r})"
            raise InvalidArgumentError(
                f"--beam: mosaic {path} has {found} {key} keyword in its header; give the "
                "beam as --beam MAJ[,MIN[,PA]] (arcsec)"
            )
    angle = header.get("BPA", 0.0)
    angle = float(angle) if _finite(angle) else 0.0
    return float(header["BMAJ"]), float(header["BMIN"]), angle


def header_frequency(header: Any, path: Path | str) -> float:
    """Return a mosaic's frequency in Hz: RESTFRQ, RESTFREQ, FREQ or a FREQ axis' CRVAL.

    Raises a one-line :class:`InvalidArgumentError` naming the mosaic, the keywords
    looked for, and ``--frequency``.
    """
    for key in FREQUENCY_KEYWORDS:
        if _positive(header.get(key)):
            return float(header[key])
    for axis in range(1, int(header.get("NAXIS", 0) or 0) + 1):
        if str(header.get(f"CTYPE{axis}", "")).upper().startswith("FREQ"):
            unit = str(header.get(f"CUNIT{axis}", "Hz")).strip().upper() or "HZ"
            value = header.get(f"CRVAL{axis}")
            if _positive(value) and unit in _FREQUENCY_UNITS:
                return float(value) * _FREQUENCY_UNITS[unit]
    raise InvalidArgumentError(
        f"--frequency: mosaic {path} has no RESTFRQ, RESTFREQ, FREQ keyword or FREQ axis "
        "(CRVAL3) in its header; give the frequency as --frequency HZ"
    )


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _positive(value: Any) -> bool:
    return _finite(value) and value > 0


# --------------------------------------------------------------------------- per mosaic


def summary_path(run_dir: Path | str, mosaic_name: str) -> Path:
    """Return where a finished mosaic's summary goes (``parts/<stem>.json``, written last)."""
    return Path(run_dir) / PARTS_DIR / f"{outputs.file_stem(mosaic_name)}.json"


def pending(tasks: list[_MosaicTask]) -> list[_MosaicTask]:
    """Return the tasks not done yet: no summary in ``parts/`` (a rerun skips the others)."""
    return [t for t in tasks if not summary_path(t.run_dir, t.name).is_file()]


def _find_all(tasks: list[_MosaicTask], workers: int, progress: bool) -> None:
    """Process the mosaics not done yet, in parallel, logging each as it ends."""
    todo = pending(tasks)
    if len(todo) < len(tasks):
        log.info("resuming: %d of %d mosaics already done", len(tasks) - len(todo), len(tasks))
    bar = _progress_bar(len(tasks), len(tasks) - len(todo), progress)
    map_in_workers(
        find_in_mosaic,
        todo,
        workers=workers,
        preload=[__name__, "bdsf"],  # workers start with them imported
        consume=lambda results: _drain(results, bar),
        what="finding sources",
    )


def _drain(results: Iterable[dict], bar: Any) -> None:
    """Log each mosaic's outcome (in this process) as its summary arrives."""
    for summary in results:
        if summary["status"] == "ok":
            log.info(
                "%s: %d sources in %.1f s",
                summary["mosaic"],
                summary["n_sources"],
                summary["seconds"],
            )
        else:
            log.warning("%s: source finding failed: %s", summary["mosaic_path"], summary["reason"])
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()


def _progress_bar(total: int, done: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=done, unit="mosaic", desc="sources", file=sys.stderr)


def find_in_mosaic(task: _MosaicTask) -> dict:
    """Run PyBDSF on one mosaic; rename its outputs into place; write its summary last."""
    run_dir = Path(task.run_dir)
    for folder in (PARTS_DIR, outputs.CATALOGUES_DIR, outputs.RMS_DIR, outputs.LOGS_DIR):
        (run_dir / folder).mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    summary = {"n_sources": 0, "status": "failed", "reason": task.problem or ""}
    if task.problem is None:
        work = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-", dir=run_dir))
        try:
            summary = _run_pybdsf(task, work)
        except Exception as exc:  # PyBDSF raises many types; the run goes on without it
            summary["reason"] = _one_line(exc)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    beam = task.beam_deg or (math.nan, math.nan, math.nan)
    summary = {
        "index": task.index,
        "mosaic": task.name,
        "mosaic_path": task.path,
        "catalogue_file": "",
        "rms_file": "",
        **summary,
        "seconds": round(time.perf_counter() - started, 3),
        "bmaj_arcsec": beam[0] * 3600.0,
        "bmin_arcsec": beam[1] * 3600.0,
        "bpa_deg": beam[2],
        "frequency_hz": task.frequency_hz if task.frequency_hz is not None else math.nan,
    }
    write_json(summary_path(run_dir, task.name), summary)
    return summary


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, RuntimeError) else text


def _run_pybdsf(task: _MosaicTask, work: Path) -> dict:
    """PyBDSF on one mosaic inside ``work``; move the catalogue, rms map and log into place.

    PyBDSF's console output (it prints what it writes even when quiet) and its log records
    go to its log file, not to this process's stdout (which carries only the run ID) or
    stderr; so do the numpy warnings of its fits.
    """
    import bdsf

    logging.getLogger("PyBDSF").propagate = False  # its log file has it all
    run_dir = Path(task.run_dir)
    kwargs: dict[str, Any] = {"rms_box": task.rms_box} if task.rms_box else {}
    catalogue, rms = work / "catalogue.srl.fits", work / "rms.fits"
    chatter = io.StringIO()
    try:
        with (
            contextlib.redirect_stdout(chatter),
            contextlib.redirect_stderr(chatter),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")  # numpy's warnings inside PyBDSF's fits
            image = bdsf.process_image(
                task.path, thresh_isl=task.thresh_isl, thresh_pix=task.thresh_pix,
                beam=task.beam_deg, frequency=task.frequency_hz, outdir=str(work),
                quiet=True, ncores=task.ncores, **kwargs,
            )  # fmt: skip
            n_sources = int(image.nsrc)
            if n_sources:
                image.write_catalog(
                    outfile=str(catalogue), format="fits", catalog_type="srl", clobber=True
                )
            image.export_image(outfile=str(rms), img_type="rms", clobber=True)
    finally:
        _keep_log(work, outputs.log_path(run_dir, task.name))
    if not n_sources:
        _write_empty_catalogue(catalogue)
    final_catalogue = outputs.catalogue_path(run_dir, task.name)
    final_rms = outputs.rms_map_path(run_dir, task.name)
    for written, final in ((catalogue, final_catalogue), (rms, final_rms)):
        if not written.is_file():
            raise RuntimeError(f"PyBDSF wrote no {final.parent.name} file")
        fsync_file(written)
        os.replace(written, final)
    return {
        "catalogue_file": final_catalogue.relative_to(run_dir).as_posix(),
        "rms_file": final_rms.relative_to(run_dir).as_posix(),
        "n_sources": n_sources,
        "status": "ok",
        "reason": "",
    }


def _keep_log(work: Path, final: Path) -> None:
    """Move PyBDSF's log (``<file>.pybdsf.log`` in ``work``) to ``logs/``."""
    for found in work.glob("*.pybdsf.log"):
        os.replace(found, final)


def _write_empty_catalogue(path: Path) -> None:
    """Write a source list with no rows (PyBDSF writes none for a mosaic without sources)."""
    from astropy.io import fits

    columns = [fits.Column(name=n, format=f, array=[]) for n, f in EMPTY_CATALOGUE_COLUMNS]
    table = fits.BinTableHDU.from_columns(columns)
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(path)


# --------------------------------------------------------------------------- assembly


def _assemble(run_dir: Path, tasks: list[_MosaicTask]) -> list[dict]:
    """Join the mosaics' summaries into ``sources.parquet``, then drop ``parts/``."""
    summaries = [json.loads(summary_path(run_dir, t.name).read_text()) for t in tasks]
    index = pd.DataFrame(summaries).sort_values("index")
    index = index[list(outputs.INDEX_COLUMNS)].reset_index(drop=True)
    write_parquet_atomic(index, run_dir / outputs.INDEX)
    shutil.rmtree(run_dir / PARTS_DIR, ignore_errors=True)
    return index.to_dict("records")


def _log_summary(run: StepRun, summaries: list[dict], seconds: float) -> None:
    ok = [s for s in summaries if s["status"] == "ok"]
    n_sources = sum(int(s["n_sources"]) for s in ok)
    run.log_metrics(
        {
            "n_mosaics": len(summaries),
            "n_mosaics_failed": len(summaries) - len(ok),
            "n_sources": n_sources,
            "seconds": seconds,
        }
    )
    run.log_metric_series("sources_per_mosaic", [s["n_sources"] for s in summaries])
    log.info(
        "%d sources in %d of %d mosaics in %.1f s; outputs in %s",
        n_sources,
        len(ok),
        len(summaries),
        seconds,
        run.output_dir,
    )
    if not ok:
        log.warning("PyBDSF failed on every mosaic: the run has no source list (see above)")
