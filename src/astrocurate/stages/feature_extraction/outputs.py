"""What a ``feature_extraction`` run leaves, and the one way to read it.

The light half of the feature stage: file names and the matrix loader, with numpy only, so
that the clustering, the report and the demo read a feature run without importing the
stage (and torch with it).

A feature run directory holds::

    features.npy     float32 (or float16) matrix, row i = cutout i of the merge's manifest
    features.json    the sidecar: model, weights hash, layer, preprocessing, n_rows, dim
"""

from __future__ import annotations

import contextlib
import json
import mmap
from pathlib import Path

import numpy as np

from astrocurate.errors import InvalidRunError

FEATURES = "features.npy"
SIDECAR = "features.json"


def load_features(directory: Path | str, *, random_access: bool = False) -> np.ndarray:
    """Memory-map the feature matrix of a feature run directory, checking its sidecar.

    Parameters
    ----------
    directory : Path or str
        The run's output directory.
    random_access : bool
        Tell the kernel that rows are read at random (no read-ahead): a subsample of a few
        thousand rows then maps only those rows' pages, not most of a large matrix.

    Returns
    -------
    ndarray, shape (n_rows, dim)
        Read-only memory map (no pickles).

    Raises
    ------
    InvalidRunError
        When the matrix or its sidecar is missing, or their shapes disagree.
    """
    directory = Path(directory)
    path, sidecar_path = directory / FEATURES, directory / SIDECAR
    if not path.is_file():
        raise InvalidRunError(f"{path}: no feature matrix (is this a feature run?)")
    if not sidecar_path.is_file():
        raise InvalidRunError(f"{sidecar_path}: no sidecar beside the feature matrix")
    matrix = np.load(path, mmap_mode="r", allow_pickle=False)
    sidecar = json.loads(sidecar_path.read_text())
    expected = (sidecar.get("n_rows"), sidecar.get("dim"))
    if matrix.ndim != 2 or matrix.shape != expected:
        raise InvalidRunError(
            f"{path}: shape {matrix.shape} does not match its sidecar "
            f"({expected[0]} x {expected[1]})"
        )
    if random_access:
        _advise_random(matrix)
    return matrix


def _advise_random(matrix: np.ndarray) -> None:
    handle = getattr(matrix, "_mmap", None)
    if handle is not None and hasattr(handle, "madvise") and hasattr(mmap, "MADV_RANDOM"):
        with contextlib.suppress(OSError, ValueError):
            handle.madvise(mmap.MADV_RANDOM)
