"""Hand-made label files: read them and find the cutouts they point at.

A label file is a CSV (or Parquet) table with a ``categories`` column and one of three
ways of pointing at a cutout (column names are case-insensitive):

``file_path``
    The path of a cutout file, in one of two conventions:

    * our exports (:mod:`astrocurate.io.export`): ``.../<cutout_id>.png`` or
      ``.../<cutout_id>.fits``, the ``cutout_id`` of the evaluated run's manifest;
    * the original pipeline's sliding-window cutouts:
      ``.../cutouts-...-size_<W>_<hash>/<mosaic>/npy/patch_<i>_<j>.npy``, saved from
      ``data[i:i + W, j:j + W]`` of the mosaic's 2-D image, so ``i`` is our ``y0`` (numpy
      row) and ``j`` our ``x0`` (numpy column). The mosaic is the folder above ``npy/``
      (or the parent folder when it is not ``npy``); ``W`` comes from the first
      ``size_<W>`` in a folder name and may be absent if only one window size has a
      cutout at that mosaic and corner.
``cutout_id`` (optionally with ``run_id``)
    A ``cutout_id`` of the evaluated run, or, where ``run_id`` names a cutting_out or
    merge_cutouts run, of that run's manifest (which the caller supplies).
``mosaic``, ``x0``, ``y0``, ``window_size``
    The window itself. ``mosaic`` is a mosaic name or the path (or file name) of its FITS
    file.

``categories`` holds a Python-list literal (``['diffuse', 'little-resolved']``), a JSON
list, one word, or words separated by ``;`` or ``|`` (:func:`parse_categories`).
"""

from __future__ import annotations

import ast
import json
import os
import re
import warnings
from collections import Counter
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from astrocurate.errors import InvalidArgumentError
from astrocurate.io.mosaic_names import mosaic_name, strip_fits_suffix

__all__ = [
    "POSITION_COLUMNS",
    "REFERENCE_FORMS",
    "categories_matrix",
    "match_labels",
    "parse_categories",
    "read_label_file",
]

#: Columns that point at a window by position.
POSITION_COLUMNS: tuple[str, ...] = ("mosaic", "x0", "y0", "window_size")
#: Accepted ways of pointing at a cutout, in order of precedence.
REFERENCE_FORMS: tuple[tuple[str, ...], ...] = (("file_path",), ("cutout_id",), POSITION_COLUMNS)

_EXPORT_NAME = re.compile(r"^(\d+)\.(png|fits)$", re.IGNORECASE)
_ORIGINAL_NAME = re.compile(r"^patch_(\d+)_(\d+)\.npy$", re.IGNORECASE)
_ORIGINAL_SIZE = re.compile(r"(?:^|[-_])size_(\d+)(?:_|$)")
_EXPECTED_CATEGORIES = (
    "expected a list such as ['diffuse', 'point-like'], one word, or words separated by ';' or '|'"
)


# --------------------------------------------------------------------------- categories


def parse_categories(text: str, *, where: str) -> tuple[str, ...]:
    """Parse the categories of one label.

    Parameters
    ----------
    text : str
        A Python-list literal of strings, a JSON list, one word, or words separated by
        ``;`` or ``|``.
    where : str
        Where the text comes from, for messages (``"labels.csv line 3"``).

    Returns
    -------
    tuple of str
        The categories, stripped, without repeats, in their order.

    Raises
    ------
    InvalidArgumentError
        Empty text or list, unbalanced brackets, nested or non-string items.
    """
    raw = text.strip() if isinstance(text, str) else ""
    items = _list_items(raw) if raw.startswith("[") else _word_items(raw)
    if not items or any(not isinstance(item, str) or not item.strip() for item in items):
        raise InvalidArgumentError(f"{where}: categories {text!r}: {_EXPECTED_CATEGORIES}")
    return tuple(dict.fromkeys(item.strip() for item in items))


def _list_items(raw: str) -> list[Any] | None:
    """Items of a Python or JSON list literal, or None if it is not one."""
    for parse in (ast.literal_eval, json.loads):
        try:
            value = parse(raw)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        return list(value) if isinstance(value, (list, tuple)) else None
    return None


def _word_items(raw: str) -> list[str] | None:
    """Words separated by ``;`` or ``|``, or None if the text looks like a broken list."""
    if not raw or any(mark in raw for mark in "[]'\","):
        return None
    return re.split(r"[;|]", raw)


# --------------------------------------------------------------------------- reading


def read_label_file(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a label file and recognise how it points at cutouts.

    Parameters
    ----------
    path : str or PathLike
        A ``.csv`` file (any other suffix is read as CSV) or a ``.parquet`` file.

    Returns
    -------
    DataFrame
        One row per label: the reference columns of the file (``file_path``, or
        ``cutout_id`` and ``run_id``, or :data:`POSITION_COLUMNS`), the parsed reference
        ``cutout_id`` (Int64), ``run_id`` (str or None), ``mosaic`` (str or None), ``x0``,
        ``y0``, ``window_size`` (Int64, NA where unknown), ``line`` (the line of the file,
        the header being line 1, blank lines skipped but counted, a label's cells on one
        line; the row number plus 1 for Parquet) and ``categories``
        (tuple of str). ``attrs["form"]`` is the reference form used.

    Raises
    ------
    InvalidArgumentError
        Missing or empty file, unreadable CSV, no reference or ``categories`` column,
        or a value that cannot be parsed (one line naming the file, the line and the value).
    """
    path = Path(path)
    raw = _read_table(path)
    form = _reference_form(raw, path)
    first_line = 1 if path.suffix.lower() == ".parquet" else 2
    lines = raw.index.to_numpy(dtype=np.int64) + first_line
    parse = {"file_path": _parse_file_path, "cutout_id": _parse_cutout_id}.get(form[0])
    references = []
    for line, record in zip(lines, raw.to_dict("records"), strict=True):
        where = f"{path.name} line {line}"
        references.append((parse or _parse_position)(record, where))
    table = pd.DataFrame(references, columns=["cutout_id", "run_id", *POSITION_COLUMNS])
    for column in ("cutout_id", "x0", "y0", "window_size"):
        table[column] = table[column].astype("Int64")
    if "file_path" in form:
        table.insert(0, "file_path", raw["file_path"].to_numpy())
    table["line"] = lines
    table["categories"] = [
        parse_categories(_as_text(value), where=f"{path.name} line {line}")
        for line, value in zip(lines, raw["categories"], strict=True)
    ]
    table.attrs["form"] = form
    return table


def _as_text(value: Any) -> str:
    """Return a categories cell as text (Parquet may hold a list of strings)."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return repr([str(v) if isinstance(v, str) else v for v in value])
    return str(value)


def _read_table(path: Path) -> pd.DataFrame:
    """Read the file as strings with lower-case, stripped column names."""
    if not path.is_file():
        raise InvalidArgumentError(f"{path}: no such label file")
    try:
        if path.suffix.lower() == ".parquet":
            raw = pd.read_parquet(path).astype(object)
        else:
            with warnings.catch_warnings():
                # More fields than the header: an unquoted list with commas, refused.
                warnings.simplefilter("error", pd.errors.ParserWarning)
                raw = pd.read_csv(
                    path,
                    dtype=str,
                    keep_default_na=False,
                    skipinitialspace=True,
                    index_col=False,
                    skip_blank_lines=False,  # kept, then dropped, so line numbers stay right
                    encoding="utf-8-sig",
                )
    except pd.errors.EmptyDataError:
        raw = pd.DataFrame()
    except (
        pd.errors.ParserError,
        pd.errors.ParserWarning,
        UnicodeDecodeError,
        OSError,
        ValueError,
    ) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InvalidArgumentError(
            f"{path}: not a readable label table ({reason}); quote category lists that hold commas"
        ) from None
    if raw.empty:
        raise InvalidArgumentError(
            f"{path}: empty label file: expected a header such as file_path,categories"
            " and one line per labelled cutout"
        )
    raw.columns = [str(c).strip().lower() for c in raw.columns]
    raw = raw.where(raw.notna(), "")
    blank = raw.map(lambda value: isinstance(value, str) and not value.strip()).all(axis=1)
    raw = raw[~blank]
    if raw.empty:
        raise InvalidArgumentError(f"{path}: no label in the file, only blank lines")
    return raw


def _reference_form(raw: pd.DataFrame, path: Path) -> tuple[str, ...]:
    """Return the first of :data:`REFERENCE_FORMS` whose columns the file has."""
    if "categories" not in raw.columns:
        raise InvalidArgumentError(
            f"{path}: no 'categories' column (columns: {', '.join(raw.columns)})"
        )
    for form in REFERENCE_FORMS:
        if all(column in raw.columns for column in form):
            return (*form, "run_id") if form == ("cutout_id",) and "run_id" in raw else form
    accepted = " | ".join(",".join(form) for form in REFERENCE_FORMS)
    raise InvalidArgumentError(
        f"{path}: no column pointing at cutouts (columns: {', '.join(raw.columns)});"
        f" expected one of: {accepted} (cutout_id optionally with run_id)"
    )


def _integer(value: Any, name: str, where: str) -> int:
    text = str(value).strip()
    if not re.fullmatch(r"\+?\d+", text):
        raise InvalidArgumentError(f"{where}: {name} {value!r}: expected an integer >= 0")
    return int(text)


def _parse_cutout_id(record: dict[str, Any], where: str) -> tuple[Any, ...]:
    run_id = str(record.get("run_id", "")).strip() or None
    return _integer(record["cutout_id"], "cutout_id", where), run_id, None, None, None, None


def _parse_position(record: dict[str, Any], where: str) -> tuple[Any, ...]:
    mosaic = str(record["mosaic"]).strip()
    if not mosaic:
        raise InvalidArgumentError(f"{where}: mosaic {record['mosaic']!r}: expected a mosaic name")
    x0, y0, size = (_integer(record[c], c, where) for c in ("x0", "y0", "window_size"))
    return None, None, _mosaic_key(mosaic), x0, y0, size


def _parse_file_path(record: dict[str, Any], where: str) -> tuple[Any, ...]:
    value = str(record["file_path"]).strip()
    path = PurePosixPath(value.replace("\\", "/"))
    exported = _EXPORT_NAME.match(path.name)
    if exported:
        return int(exported.group(1)), None, None, None, None, None
    original = _ORIGINAL_NAME.match(path.name)
    folders = path.parent.parts
    if folders and folders[-1].lower() == "npy":
        folders = folders[:-1]
    if not original or not folders or folders[-1] in ("", "/", ".", ".."):
        raise InvalidArgumentError(
            f"{where}: file_path {value!r}: expected <cutout_id>.png or <cutout_id>.fits"
            " (our exports) or .../<mosaic>/npy/patch_<y0>_<x0>.npy (original pipeline)"
        )
    sizes = [m.group(1) for m in map(_ORIGINAL_SIZE.search, folders) if m]
    size = int(sizes[-1]) if sizes else None
    y0, x0 = int(original.group(1)), int(original.group(2))
    return None, None, folders[-1], x0, y0, size


def _mosaic_key(value: str) -> str:
    """Return a label's mosaic: a name as is, a FITS path or file name as its stem."""
    name = PurePosixPath(value.replace("\\", "/")).name
    return strip_fits_suffix(name) or value


# --------------------------------------------------------------------------- matching


def match_labels(
    table: pd.DataFrame,
    manifest: pd.DataFrame,
    *,
    source: str,
    run_manifests: Mapping[str, pd.DataFrame] | None = None,
) -> tuple[np.ndarray, list[tuple[str, ...]], int]:
    """Find the manifest rows that labels point at, merging repeated labels.

    Parameters
    ----------
    table : DataFrame
        Labels from :func:`read_label_file`.
    manifest : DataFrame
        The evaluated run's manifest (columns ``cutout_id``, ``mosaic``, ``mosaic_path``,
        ``window_size``, ``x0``, ``y0``).
    source : str
        The label file, for messages.
    run_manifests : mapping of str to DataFrame, optional
        Manifest of each ``run_id`` the labels name: their ``cutout_id`` is looked up there
        and matched to ``manifest`` by mosaic, corner and window size.

    Returns
    -------
    rows : ndarray of int64, shape (m,)
        Positions in ``manifest`` of the labelled cutouts, ascending.
    categories : list of tuple of str
        Their categories; labels pointing at the same cutout are merged (union, in order of
        first appearance).
    unmatched : int
        Labels that point at no cutout of ``manifest``.

    Raises
    ------
    InvalidArgumentError
        No label points at a cutout, a ``run_id`` without a manifest, or a corner without
        window size shared by several window sizes.
    """
    index = _ManifestIndex(manifest)
    merged: dict[int, dict[str, None]] = {}
    unmatched = 0
    for label in table.to_dict("records"):
        row = index.find(_as_position(label, run_manifests, source), label, source)
        if row is None:
            unmatched += 1
            continue
        merged.setdefault(row, {}).update(dict.fromkeys(label["categories"]))
    if not merged:
        first = table.iloc[0] if len(table) else None
        where = "" if first is None else f" (first: line {first['line']}, {_describe(first)})"
        raise InvalidArgumentError(
            f"{source}: none of its {len(table)} labels points at a cutout of the evaluated"
            f" run{where}"
        )
    rows = np.array(sorted(merged), dtype=np.int64)
    return rows, [tuple(merged[r]) for r in rows.tolist()], unmatched


def _describe(label: Mapping[str, Any]) -> str:
    if isinstance(label.get("file_path"), str):
        return f"file_path {label['file_path']!r}"
    if not pd.isna(label.get("mosaic")):
        return ", ".join(f"{c} {label[c]!r}" for c in POSITION_COLUMNS)
    run = "" if label.get("run_id") is None else f" of run {label['run_id']}"
    return f"cutout_id {label['cutout_id']}{run}"


def _as_position(
    label: Mapping[str, Any], run_manifests: Mapping[str, pd.DataFrame] | None, source: str
) -> Mapping[str, Any] | None:
    """Return a ``run_id`` label as its window in that run's manifest (None if absent)."""
    run_id = label.get("run_id")
    if run_id is None or pd.isna(run_id):
        return label
    if run_manifests is None or run_id not in run_manifests:
        raise InvalidArgumentError(
            f"{source} line {label['line']}: run_id {run_id!r}: no manifest of this run was given"
        )
    run = run_manifests[run_id]
    found = run[run["cutout_id"].to_numpy() == int(label["cutout_id"])]
    if found.empty:
        return None
    window = found.iloc[0]
    mosaic = str(window["mosaic"])
    return {
        "cutout_id": pd.NA,
        "mosaic": mosaic,
        **{c: int(window[c]) for c in POSITION_COLUMNS[1:]},
    }


class _ManifestIndex:
    """Lookup of manifest positions by ``cutout_id`` or by mosaic, corner and size."""

    def __init__(self, manifest: pd.DataFrame) -> None:
        ids = manifest["cutout_id"].to_numpy(dtype=np.int64)
        self.by_id = dict(zip(ids.tolist(), range(len(ids)), strict=True))
        self.by_corner: dict[tuple[str, int, int], list[tuple[int, int]]] = {}
        columns = zip(
            manifest["mosaic"].astype(str),
            manifest["mosaic_path"].astype(str),
            *(manifest[c].to_numpy(dtype=np.int64).tolist() for c in ("x0", "y0", "window_size")),
            strict=True,
        )
        for row, (name, path, x0, y0, size) in enumerate(columns):
            stem = strip_fits_suffix(PurePosixPath(path).name)
            for key in dict.fromkeys((name, stem, mosaic_name(path) if path else None)):
                if key:
                    self.by_corner.setdefault((key, x0, y0), []).append((size, row))

    def find(self, label: Mapping[str, Any] | None, original: Mapping[str, Any], source: str):
        """Return the position of the cutout ``label`` points at, or None."""
        if label is None:
            return None
        if not pd.isna(label.get("cutout_id")):
            return self.by_id.get(int(label["cutout_id"]))
        candidates = self.by_corner.get((label["mosaic"], int(label["x0"]), int(label["y0"])), [])
        size = label.get("window_size")
        rows = sorted({row for s, row in candidates if pd.isna(size) or s == int(size)})
        if len(rows) > 1:
            raise InvalidArgumentError(
                f"{source} line {original['line']}: {_describe(original)}: several window sizes"
                " have a cutout there; give the size (a size_<W> folder or window_size)"
            )
        return rows[0] if rows else None


def categories_matrix(
    categories: list[tuple[str, ...]],
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Multi-hot matrix of categories, most frequent first (ties: by name).

    Parameters
    ----------
    categories : list of tuple of str
        The categories of each labelled cutout (:func:`match_labels`).

    Returns
    -------
    matrix : ndarray of bool, shape (m, C)
    names : tuple of str
        The category of each column.
    """
    counts = Counter(name for row in categories for name in set(row))
    names = tuple(sorted(counts, key=lambda name: (-counts[name], name)))
    column = {name: c for c, name in enumerate(names)}
    matrix = np.zeros((len(categories), len(names)), dtype=bool)
    for r, row in enumerate(categories):
        matrix[r, [column[name] for name in row]] = True
    return matrix, names
