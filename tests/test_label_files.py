"""Hand-made label files (astrocurate.io.label_files)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from astrocurate.errors import InvalidArgumentError
from astrocurate.io.label_files import (
    categories_matrix,
    match_labels,
    parse_categories,
    read_label_file,
)

ORIGINAL_RUN = "outputs/cutouts/cutouts-strategy_sliding_window-overlap_05-size_256_30d67552"


def _manifest() -> pd.DataFrame:
    """A merged manifest: two mosaics, windows of 128 and 256 px."""
    rows = [
        ("P144+35", "/data/P144+35/mosaic-blanked.fits", 256, 4480, 8192),
        ("P144+35", "/data/P144+35/mosaic-blanked.fits", 128, 4480, 8192),
        ("P144+35", "/data/P144+35/mosaic-blanked.fits", 256, 0, 0),
        ("field_b", "/data/field_b.fits.gz", 64, 32, 96),
    ]
    table = pd.DataFrame(rows, columns=["mosaic", "mosaic_path", "window_size", "x0", "y0"])
    table.insert(0, "cutout_id", np.arange(len(table), dtype=np.int64))
    return table


def _write(tmp_path, text: str, name: str = "labels.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _one_line_error(excinfo, *parts: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    for part in parts:
        assert part in message
    return message


# ----------------------------------------------------------------- categories


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("['diffuse', 'little-resolved']", ("diffuse", "little-resolved")),
        ("['artefact']", ("artefact",)),
        ('["sparse", "point-like"]', ("sparse", "point-like")),
        ("  diffuse ", ("diffuse",)),
        ("sparse; point-like", ("sparse", "point-like")),
        ("sparse|point-like|sparse", ("sparse", "point-like")),
        ("[' a ', 'b']", ("a", "b")),
    ],
)
def test_parse_categories_forms(text, expected):
    assert parse_categories(text, where="f.csv line 2") == expected


@pytest.mark.parametrize(
    "text",
    ["", "[]", "['a', ['b']]", "['a', 1]", "['a', 'b'", "a]", "a;;b", "['a', '']", "__import__"],
)
def test_parse_categories_refuses(text):
    if text == "__import__":
        text = "__import__('os').system('true')"
    with pytest.raises(InvalidArgumentError) as excinfo:
        parse_categories(text, where="f.csv line 7")
    _one_line_error(excinfo, "f.csv line 7", "expected a list such as")


# ----------------------------------------------------------------- reading and matching


def test_original_file_paths(tmp_path):
    path = _write(
        tmp_path,
        "file_path,categories\n"
        f"{ORIGINAL_RUN}/P144+35/npy/patch_8192_4480.npy,\"['diffuse', 'little-resolved']\"\n"
        f"{ORIGINAL_RUN}/P144+35/npy/patch_0_0.npy,['artefact']\n"
        f"{ORIGINAL_RUN}/P999+99/npy/patch_0_0.npy,['artefact']\n",
    )
    table = read_label_file(path)
    assert table["line"].tolist() == [2, 3, 4]
    assert table.loc[0, "x0"] == 4480 and table.loc[0, "y0"] == 8192
    assert table.loc[0, "window_size"] == 256 and table.loc[0, "mosaic"] == "P144+35"
    rows, categories, unmatched = match_labels(table, _manifest(), source=path.name)
    assert rows.tolist() == [0, 2] and rows.dtype == np.int64
    assert categories == [("diffuse", "little-resolved"), ("artefact",)]
    assert unmatched == 1


def test_export_file_paths_and_duplicates_merged(tmp_path):
    path = _write(
        tmp_path,
        "File_Path,Categories\n"
        "export/png/3.png,diffuse\n"
        "export/fits/3.fits,\"['point-like', 'diffuse']\"\n"
        "export/png/1.png,artefact\n",
    )
    rows, categories, unmatched = match_labels(read_label_file(path), _manifest(), source=path.name)
    assert rows.tolist() == [1, 3]
    assert categories == [("artefact",), ("diffuse", "point-like")]
    assert unmatched == 0


def test_cutout_ids_with_and_without_run(tmp_path):
    path = _write(tmp_path, "cutout_id,run_id,categories\n2,,a\n7,abc123,b\n8,abc123,c\n")
    run = pd.DataFrame(
        {"cutout_id": [7], "mosaic": ["field_b"], "window_size": [64], "x0": [32], "y0": [96]}
    )
    table = read_label_file(path)
    rows, categories, unmatched = match_labels(
        table, _manifest(), source=path.name, run_manifests={"abc123": run}
    )
    assert rows.tolist() == [2, 3] and categories == [("a",), ("b",)] and unmatched == 1
    with pytest.raises(InvalidArgumentError) as excinfo:
        match_labels(table, _manifest(), source=path.name)
    _one_line_error(excinfo, "labels.csv line 3", "abc123")


def test_positions_by_name_or_path(tmp_path):
    path = _write(
        tmp_path,
        "mosaic,x0,y0,window_size,categories\n"
        "field_b,32,96,64,a\n"
        "/elsewhere/P144+35/mosaic-blanked.fits,4480,8192,128,b\n"
        "mosaic-blanked.fits,0,0,256,c\n",
    )
    rows, categories, unmatched = match_labels(read_label_file(path), _manifest(), source=path.name)
    assert rows.tolist() == [1, 2, 3] and unmatched == 0
    assert categories == [("b",), ("c",), ("a",)]


def test_parquet_labels(tmp_path):
    path = tmp_path / "labels.parquet"
    pd.DataFrame({"cutout_id": [0, 3], "categories": [["a"], ["b", "c"]]}).to_parquet(path)
    table = read_label_file(path)
    assert table["line"].tolist() == [1, 2]
    rows, categories, _ = match_labels(table, _manifest(), source=path.name)
    assert rows.tolist() == [0, 3] and categories == [("a",), ("b", "c")]


def test_blank_lines_and_bom_keep_line_numbers(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("cutout_id,categories\n0,a\n\n3,b\n", encoding="utf-8-sig")
    table = read_label_file(path)
    assert table["line"].tolist() == [2, 4]
    path.write_text("cutout_id,categories\n0,a\n\n3,\n", encoding="utf-8-sig")
    with pytest.raises(InvalidArgumentError) as excinfo:
        read_label_file(path)
    _one_line_error(excinfo, "labels.csv line 4: categories ''")


def test_no_label_matches(tmp_path):
    path = _write(tmp_path, "cutout_id,categories\n40,a\n41,b\n")
    with pytest.raises(InvalidArgumentError) as excinfo:
        match_labels(read_label_file(path), _manifest(), source=path.name)
    _one_line_error(excinfo, "labels.csv: none of its 2 labels", "line 2", "cutout_id 40")


def test_corner_without_size_must_be_unique(tmp_path):
    path = _write(tmp_path, "file_path,categories\nrun/P144+35/npy/patch_8192_4480.npy,a\n")
    with pytest.raises(InvalidArgumentError) as excinfo:
        match_labels(read_label_file(path), _manifest(), source=path.name)
    _one_line_error(excinfo, "labels.csv line 2", "window sizes")
    path = _write(tmp_path, "file_path,categories\nrun/P144+35/npy/patch_0_0.npy,a\n")
    rows, _, _ = match_labels(read_label_file(path), _manifest(), source=path.name)
    assert rows.tolist() == [2]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "empty label file"),
        ("file_path,categories\n", "empty label file"),
        ("name,categories\nx,a\n", "no column pointing at cutouts (columns: name, categories)"),
        ("cutout_id,label\n1,a\n", "no 'categories' column"),
        ("cutout_id,categories\n1,a\n2,\"['a', 3]\"\n", "labels.csv line 3: categories"),
        ("cutout_id,categories\n1,a\nx2,b\n", "labels.csv line 3: cutout_id 'x2'"),
        ("mosaic,x0,y0,window_size,categories\nm,1,-2,64,a\n", "line 2: y0 '-2'"),
        ("file_path,categories\nsome/image.jpg,a\n", "line 2: file_path 'some/image.jpg'"),
        ("file_path,categories\na/1.png,['a', 'b']\n", "not a readable label table"),
    ],
)
def test_label_file_errors(tmp_path, text, expected):
    path = _write(tmp_path, text)
    with pytest.raises(InvalidArgumentError) as excinfo:
        read_label_file(path)
    _one_line_error(excinfo, "labels.csv", expected)


def test_missing_label_file(tmp_path):
    with pytest.raises(InvalidArgumentError) as excinfo:
        read_label_file(tmp_path / "nowhere.csv")
    _one_line_error(excinfo, "nowhere.csv", "no such label file")


def test_categories_matrix_orders_by_frequency_then_name():
    matrix, names = categories_matrix([("b", "a"), ("c",), ("a",), ("c", "b")])
    assert names == ("a", "b", "c")
    assert matrix.tolist() == [
        [True, True, False],
        [False, False, True],
        [True, False, False],
        [False, True, True],
    ]
    matrix, names = categories_matrix([("z",), ("y", "z")])
    assert names == ("z", "y") and matrix.dtype == bool
