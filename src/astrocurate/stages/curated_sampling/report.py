"""Visual report of a curated sampling run: one self-contained HTML page (issue #6).

:func:`write_report` reads a ``curated_sampling`` run directory (``sampling.json``,
``selected.npy``, ``baseline_random.npy``, ``curated.parquet``, ``metrics.json``) and the
clustering, feature and merged-cutout directories it names, and writes::

    <sampling_dir>/report/
        index.html                     the page; every image embedded as a PNG data URI
        balance_level_<L>.png          pool vs random vs curated share of each cluster
        balance_classes.png            the same over truth classes (with a truth catalogue)
        feature_map.png                2-D projection of the features (PCA, or UMAP)
        cluster_sizes_level_<L>.png    cluster-size distribution of each level

The page works from disk and inside ``mlflow ui``'s artifact viewer (no external
references). The report directory appears atomically: it is built under a temporary
name in ``sampling_dir`` and renamed into place.

The report stays small and fast whatever the survey size: the feature map draws a
seeded subsample of at most ``max_points`` pool points (read from the memory-mapped
feature matrix by sorted row index), the galleries read the pixels of a few dozen
cutouts only, and cluster counts come from ``bincount`` over the memory-mapped label
arrays. This module knows no MLflow: the stage that calls it logs the directory.

This module builds and publishes the report; the parts are :mod:`.report_data` (the run,
cluster and class counts), :mod:`.report_map` (feature projection),
:mod:`.report_galleries` (cutout thumbnails), :mod:`.report_plots` (figures) and
:mod:`.report_html` (the page).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from astrocurate.errors import InvalidArgumentError
from astrocurate.io.atomic import atomic_directory
from astrocurate.stages.curated_sampling.report_data import (
    class_shares,
    level_counts,
    load_sampling_run,
    set_entropies,
)
from astrocurate.stages.curated_sampling.report_galleries import build_galleries, quality_galleries
from astrocurate.stages.curated_sampling.report_html import render_html
from astrocurate.stages.curated_sampling.report_map import check_projection, feature_map
from astrocurate.stages.curated_sampling.report_plots import (
    Figure,
    balance_figure,
    class_figure,
    cluster_size_figure,
    map_figure,
)

__all__ = [
    "DEFAULT_GALLERY_CLUSTERS",
    "DEFAULT_GALLERY_SIZE",
    "INDEX",
    "REPORT_DIR",
    "write_report",
]

REPORT_DIR = "report"
INDEX = "index.html"

#: Default number of cutouts shown per gallery cluster.
DEFAULT_GALLERY_SIZE = 12
#: Default number of largest (and of smallest) clusters given a gallery.
DEFAULT_GALLERY_CLUSTERS = 3


def write_report(
    sampling_dir: Path | str,
    *,
    max_points: int = 20000,
    gallery_size: int = DEFAULT_GALLERY_SIZE,
    gallery_clusters: int = DEFAULT_GALLERY_CLUSTERS,
    projection: str = "auto",
    random_state: int = 0,
) -> Path:
    """Write the HTML report of a sampling run to ``<sampling_dir>/report/index.html``.

    Parameters
    ----------
    sampling_dir : path-like
        A ``curated_sampling`` run directory.
    max_points : int, default 20000
        Most pool points drawn on the feature map (a seeded uniform subsample; a quarter
        as many curated points are drawn on top).
    gallery_size : int, default 12
        Cutouts shown per gallery cluster.
    gallery_clusters : int, default 3
        Galleries for this many largest and this many smallest top-level clusters.
    projection : {"auto", "pca", "umap"}, default "auto"
        Feature map projection; ``auto`` uses UMAP when the ``umap`` package is
        importable, else PCA.
    random_state : int, default 0
        Seed of the subsamples (same inputs and seed: same report).

    Returns
    -------
    Path
        The ``index.html`` written (its PNG figures lie beside it).

    Raises
    ------
    InvalidArgumentError
        If a parameter is out of range.
    InvalidRunError
        If the directory is not a complete sampling run.
    """
    _check_positive(
        max_points=max_points, gallery_size=gallery_size, gallery_clusters=gallery_clusters
    )
    check_projection(projection)
    run = load_sampling_run(sampling_dir)
    rng = np.random.default_rng(random_state)
    counts = level_counts(run)
    top = counts[run.top - 1]
    entropies = set_entropies(top.counts, run.metrics, f"level_{run.top}_entropy")
    classes = class_shares(run)
    balance = [balance_figure(top, entropies)] + ([class_figure(classes)] if classes else [])
    fmap = map_figure(
        feature_map(run, max_points=max_points, projection=projection, rng=rng), run.top
    )
    galleries = build_galleries(run, top, n_clusters=gallery_clusters, size=gallery_size, rng=rng)
    galleries += quality_galleries(run, gallery_size)
    sizes = [cluster_size_figure(c) for c in counts]
    page = render_html(
        run,
        entropies=entropies,
        classes=classes,
        balance=balance,
        feature_map_figure=fmap,
        galleries=galleries,
        sizes=sizes,
    )
    return _publish(run.directory, page, [*balance, fmap, *sizes])


def _check_positive(**values: int) -> None:
    """Raise unless every value is a positive integer (the message names it)."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise InvalidArgumentError(f"{name}: expected a positive integer, got {value!r}")


#: Prefix of the temporary folders of :func:`_publish` (``.tmp-report-<pid>-...``): a
#: ``.tmp`` name, so that hashing and ``astrocurate verify`` skip them (they are no output).
_TMP_PREFIX = f".tmp-{REPORT_DIR}-"


def _publish(directory: Path, page: str, figures: Sequence[Figure]) -> Path:
    """Write the report under a temporary name in ``directory``, then rename it into place.

    The new report is complete under ``.tmp-report-<pid>-*`` before anything is renamed;
    then the old ``report/`` is renamed out of the way and the new one into place. A
    process killed at any point leaves ``report/`` either as the complete old (or new)
    report or absent, never partial; the folders it leaves behind are removed by the next
    call.
    """
    final = directory / REPORT_DIR
    _remove_leftovers(directory)
    with atomic_directory(final, _TMP_PREFIX) as built:
        for figure in figures:
            (built / figure.name).write_bytes(figure.png)
        (built / INDEX).write_text(page, encoding="utf-8")
    return final / INDEX


def _remove_leftovers(directory: Path) -> None:
    """Remove the temporary folders of report writers that are no longer running."""
    for path in directory.glob(f"{_TMP_PREFIX}*"):
        pid = path.name[len(_TMP_PREFIX) :].split("-", 1)[0]
        if not pid.isdigit() or not _process_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (a foreign one counts as running)."""
    if pid == os.getpid():
        return False  # an earlier, interrupted call of this process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
