"""The cutout store: atomic .npy stacks, typed manifests, random access by cutout_id."""

from __future__ import annotations

import json
import multiprocessing
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.io import fits

from astrocurate.io import atomic, cutout_store
from astrocurate.io import mosaics as mosaic_io
from astrocurate.io.cutout_store import (
    COMPANION_COLUMNS,
    MANIFEST,
    MANIFEST_COLUMNS,
    MANIFEST_TYPES,
    MOSAICS,
    NAN_FILL_VALUE,
    CutoutReader,
    CutoutStoreError,
    NpyStackWriter,
    read_manifest,
    read_manifest_rows,
    write_parquet_atomic,
)

RNG = np.random.default_rng(0)


# --------------------------------------------------------------------------- NpyStackWriter


@pytest.mark.parametrize(
    "batches",
    [[3], [1, 4, 2], [0, 2], []],
    ids=["one-batch", "three-batches", "empty-batch", "no-cutouts"],
)
def test_npy_stack_writer_round_trip(tmp_path: Path, batches: list[int]) -> None:
    path = tmp_path / "stack.npy"
    writer = NpyStackWriter(path, 5)
    stacks = [RNG.normal(size=(n, 5, 5)).astype(np.float32) for n in batches]
    for stack in stacks:
        writer.append(stack)
        assert not path.exists()  # nothing under the final name before close
    assert writer.close() == path
    loaded = np.load(path, mmap_mode="r")
    assert loaded.dtype == np.dtype("<f4") and loaded.shape == (sum(batches), 5, 5)
    expected = np.concatenate(stacks) if stacks else np.empty((0, 5, 5), np.float32)
    np.testing.assert_array_equal(loaded, expected)
    assert path.stat().st_size == 128 + expected.nbytes
    assert list(tmp_path.iterdir()) == [path]


def test_npy_stack_writer_converts_to_little_endian_float32(tmp_path: Path) -> None:
    data = RNG.normal(size=(2, 3, 3))  # float64
    writer = NpyStackWriter(tmp_path / "a.npy", 3)
    writer.append(data.astype(">f8"))
    writer.close()
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), data.astype(np.float32))


def test_npy_stack_writer_starts_writing_out_each_range_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What is written goes to disk in consecutive ranges while more is written, not all
    at the final fsync; the file is the same."""
    started: list[tuple[int, int]] = []
    monkeypatch.setattr(cutout_store, "WRITEBACK_BYTES", 1000)
    monkeypatch.setattr(cutout_store, "start_writeback", lambda fd, o, n: started.append((o, n)))
    writer = NpyStackWriter(tmp_path / "a.npy", 5)
    stacks = [RNG.normal(size=(n, 5, 5)).astype(np.float32) for n in (3, 9, 1, 12, 20)]
    for stack in stacks:
        writer.append(stack)
    writer.close()
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.concatenate(stacks))
    assert started and started[0][0] == 0 and all(n >= 1000 for _, n in started)
    ends = [o + n for o, n in started]
    assert [o for o, _ in started[1:]] == ends[:-1]  # consecutive, none twice
    assert ends[-1] <= 128 + 45 * 25 * 4


def test_start_writeback_binds_linux_sync_file_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "f.bin"
    with open(path, "wb") as handle:
        handle.write(b"x" * 100_000)
        handle.flush()
        function = atomic._sync_file_range()
        assert function is not None  # Linux
        assert function(handle.fileno(), 0, 100_000, atomic._SYNC_FILE_RANGE_WRITE) == 0
        atomic.start_writeback(handle.fileno(), 0, 100_000)
    atomic._sync_file_range.cache_clear()
    monkeypatch.setattr(atomic.sys, "platform", "darwin")
    try:
        assert atomic._sync_file_range() is None
        atomic.start_writeback(0, 0, 10)  # nothing to call: nothing happens
    finally:
        atomic._sync_file_range.cache_clear()


def test_npy_stack_writer_abort_leaves_nothing(tmp_path: Path) -> None:
    writer = NpyStackWriter(tmp_path / "a.npy", 3)
    writer.append(np.zeros((2, 3, 3), np.float32))
    writer.abort()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "shape", [(2, 3, 4), (3, 3), (1, 4, 4)], ids=["not-square", "2-d", "wrong-size"]
)
def test_npy_stack_writer_rejects_wrong_shapes(tmp_path: Path, shape) -> None:
    writer = NpyStackWriter(tmp_path / "a.npy", 3)
    with pytest.raises(ValueError, match=r"expected \(n, 3, 3\)"):
        writer.append(np.zeros(shape, np.float32))
    writer.abort()


# --------------------------------------------------------------------------- manifests


def _manifest_frame(n: int, store: str = "copy") -> pd.DataFrame:
    table = pd.DataFrame(
        {
            "cutout_id": np.arange(n, dtype=np.int64),
            "mosaic": ["m"] * n,
            "mosaic_path": ["/nowhere/m.fits"] * n,
            "window_size": np.full(n, 4, dtype=np.int64),
            "x0": np.arange(n, dtype=np.int64),
            "y0": np.zeros(n, dtype=np.int64),
            **{c: np.zeros(n) for c in ("ra", "dec", "pixel_scale_arcsec", "nan_fraction")},
            **{c: np.ones(n) for c in ("mean", "std", "max", "noise_mad", "peak_snr")},
            **{c: np.full(n, np.nan) for c in COMPANION_COLUMNS},
            "store": [store] * n,
            "array_file": ["pixels/m.npy" if store == "copy" else None] * n,
            "array_row": np.arange(n, dtype=np.int64) if store == "copy" else np.full(n, -1),
        }
    )
    return table[list(MANIFEST_COLUMNS)]


@pytest.mark.parametrize(
    ("n", "store"), [(3, "copy"), (3, "virtual"), (0, "copy")], ids=["copy", "virtual", "empty"]
)
def test_manifest_types_do_not_depend_on_values(tmp_path: Path, n: int, store: str) -> None:
    frame = _manifest_frame(n, store)
    if n == 0:
        frame = frame.astype({c: object for c in ("mosaic", "mosaic_path", "store", "array_file")})
    write_parquet_atomic(frame, tmp_path / MANIFEST, MANIFEST_TYPES)
    schema = pq.read_schema(tmp_path / MANIFEST)
    assert schema.names == list(MANIFEST_COLUMNS)
    assert [schema.field(c).type for c in MANIFEST_COLUMNS] == [
        MANIFEST_TYPES[c] for c in MANIFEST_COLUMNS
    ]
    assert schema.field("array_file").type == pa.string()
    back = read_manifest(tmp_path)
    assert len(back) == n and list(back.columns) == list(MANIFEST_COLUMNS)
    assert [p.name for p in tmp_path.iterdir()] == [MANIFEST]  # no temporary left


def test_read_manifest_of_a_directory_without_one(tmp_path: Path) -> None:
    with pytest.raises(CutoutStoreError, match="no cutout manifest") as info:
        read_manifest(tmp_path)
    assert str(tmp_path) in str(info.value)


# --------------------------------------------------------------------------- reader


@pytest.fixture
def copied(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A copied store of 6 cutouts of 4 x 4 pixels in one array file."""
    (tmp_path / "pixels").mkdir()
    cutouts = RNG.normal(size=(6, 4, 4)).astype(np.float32)
    np.save(tmp_path / "pixels" / "m.npy", cutouts)
    write_parquet_atomic(_manifest_frame(6), tmp_path / MANIFEST, MANIFEST_TYPES)
    return tmp_path, cutouts


def test_reader_random_access(copied) -> None:
    directory, cutouts = copied
    reader = CutoutReader.from_directory(directory)
    assert len(reader) == 6
    for i in (5, 0, 3, 3):
        got = reader[i]
        np.testing.assert_array_equal(got, cutouts[i])
        assert got.flags.writeable and got.flags.owndata  # a copy, not a view of the file
    np.testing.assert_array_equal(reader.read([4, 1]), cutouts[[4, 1]])
    empty = reader.read([])
    assert empty.shape == (0, 0, 0) and empty.dtype == np.float32


@pytest.mark.parametrize("index", [-1, 6, 100], ids=["negative", "one-past", "far"])
def test_reader_index_out_of_range(copied, index: int) -> None:
    reader = CutoutReader.from_directory(copied[0])
    with pytest.raises(IndexError, match=r"out of range 0\.\.5"):
        reader[index]


def test_reader_missing_pixel_file(copied) -> None:
    directory, _ = copied
    (directory / "pixels" / "m.npy").unlink()
    with pytest.raises(CutoutStoreError, match="pixel file is missing"):
        CutoutReader.from_directory(directory)[0]


def test_reader_pickles_without_open_files(copied) -> None:
    directory, cutouts = copied
    reader = CutoutReader.from_directory(directory)
    reader[0]  # opens the array
    clone = pickle.loads(pickle.dumps(reader))
    assert len(pickle.dumps(reader)) < cutouts.nbytes + 4096  # the mapped file is not inside
    np.testing.assert_array_equal(clone[2], cutouts[2])


def _read_in_child(reader: CutoutReader, index: int, queue) -> None:
    queue.put(reader[index])


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_reader_in_a_child_process(copied, method: str) -> None:
    directory, cutouts = copied
    reader = CutoutReader.from_directory(directory)
    reader[1]  # opened in the parent before the child starts
    context = multiprocessing.get_context(method)
    queue = context.Queue()
    child = context.Process(target=_read_in_child, args=(reader, 4, queue))
    child.start()
    got = queue.get(timeout=120)
    child.join(timeout=60)
    assert child.exitcode == 0
    np.testing.assert_array_equal(got, cutouts[4])


def _virtual_store(directory: Path, n_mosaics: int) -> tuple[list[Path], np.ndarray]:
    """Virtual cutouts of 4 x 4 at (x0, y0) = (2, 3) of several small mosaics with blanks."""
    paths, images = [], []
    for i in range(n_mosaics):
        image = RNG.normal(size=(10, 12)).astype(np.float32)
        image[3, 2] = np.nan
        path = directory / f"m{i}.fits"
        fits.PrimaryHDU(image).writeto(path)
        paths.append(path)
        images.append(image)
    manifest = pd.concat([_manifest_frame(1, "virtual")] * n_mosaics, ignore_index=True)
    manifest["cutout_id"] = np.arange(n_mosaics)
    manifest["mosaic_path"] = [str(p) for p in paths]
    manifest["x0"], manifest["y0"], manifest["nan_fraction"] = 2, 3, 1 / 16
    write_parquet_atomic(manifest, directory / MANIFEST, MANIFEST_TYPES)
    fingerprints = [json.dumps(mosaic_io.file_fingerprint(p)) for p in paths]
    mosaics = pd.DataFrame({"mosaic_path": [str(p) for p in paths], "fingerprint": fingerprints})
    write_parquet_atomic(mosaics, directory / MOSAICS)
    return paths, np.stack(images)


def test_virtual_reader_fills_blanks_and_limits_open_files(tmp_path: Path) -> None:
    _, images = _virtual_store(tmp_path, 5)
    reader = CutoutReader.from_directory(tmp_path, max_open=2)
    for _ in range(2):
        for i in (0, 3, 1, 4, 2, 0):
            expected = images[i, 3:7, 2:6].copy()
            expected[np.isnan(expected)] = NAN_FILL_VALUE
            np.testing.assert_array_equal(reader[i], expected)
            assert len(reader._open) <= 2
    clone = pickle.loads(pickle.dumps(reader))  # open mosaics are not pickled
    np.testing.assert_array_equal(clone[3], reader[3])
    reader.close()
    assert reader._open == {}
    np.testing.assert_array_equal(reader[4][1:], images[4, 4:7, 2:6])


def test_a_batch_read_equals_its_cutouts_read_one_by_one(tmp_path: Path) -> None:
    """Rows of several mosaics and pixel files, out of order: grouped reads, same pixels."""
    _, images = _virtual_store(tmp_path, 3)
    virtual = read_manifest(tmp_path)
    pixels = RNG.normal(size=(4, 4, 4)).astype(np.float32)
    np.save(tmp_path / "copied.npy", pixels)
    copied = _manifest_frame(4)
    copied["array_file"], copied["array_row"] = "copied.npy", [3, 0, 2, 1]
    manifest = pd.concat([virtual, copied], ignore_index=True)
    manifest["cutout_id"] = np.arange(len(manifest))
    manifest.loc[1, "nan_fraction"] = 0.0  # a blank kept as NaN: no fill asked for
    reader = CutoutReader(manifest, tmp_path, max_open=2)
    order = [5, 0, 3, 1, 6, 2, 4, 5, 0]  # mosaic 0 twice, apart; mosaics 1 and 2 once
    batch = reader.read(order)
    assert batch.dtype == np.float32 and batch.shape == (9, 4, 4)
    for got, i in zip(batch, order, strict=True):
        np.testing.assert_array_equal(got, reader[i])
    assert np.isnan(batch[3]).sum() == 1 and not np.isnan(batch[[1, 5]]).any()
    np.testing.assert_array_equal(batch[2], pixels[3])
    np.testing.assert_array_equal(batch[3], images[1, 3:7, 2:6])
    into = np.full((3, 4, 4), -1.0, dtype=np.float32)
    assert reader.read([4, 5, 6], out=into) is into
    np.testing.assert_array_equal(into, pixels[[0, 2, 1]])
    with pytest.raises(IndexError, match="cutout_id 7 out of range"):
        reader.read([0, 7])


@pytest.mark.parametrize("change", ["rewritten", "deleted"])
def test_virtual_reader_refuses_a_changed_mosaic(tmp_path: Path, change: str) -> None:
    paths, images = _virtual_store(tmp_path, 2)
    if change == "rewritten":
        fits.PrimaryHDU(images[1] + 1).writeto(paths[1], overwrite=True)
        fragment = "content changed"
    else:
        paths[1].unlink()
        fragment = "missing"
    reader = CutoutReader.from_directory(tmp_path)
    reader[0]  # the other mosaic is fine
    with pytest.raises(CutoutStoreError, match=fragment) as info:
        reader[1]
    assert str(paths[1]) in str(info.value)


def test_a_reader_dropped_without_close_closes_its_files(tmp_path: Path) -> None:
    """Its open mosaics are closed when it goes, not left to the garbage collector, which
    warned of an unclosed file in whichever test happened to run then."""
    import gc
    import warnings

    _virtual_store(tmp_path, 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reader = CutoutReader.from_directory(tmp_path)
        reader.read([0, 1])
        del reader
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


@pytest.mark.parametrize("batch_rows", [3, 65536])
def test_read_manifest_rows_reads_row_groups_in_any_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch_rows: int
) -> None:
    import astrocurate.io.cutout_store as store_module

    monkeypatch.setattr(store_module, "_BATCH_ROWS", batch_rows)
    table = pd.DataFrame(
        {
            "cutout_id": np.arange(50),
            "x0": np.arange(50) * 3,
            "f": [f"/a/{i % 4}" for i in range(50)],
        }
    )
    pq.write_table(pa.Table.from_pandas(table), tmp_path / "manifest.parquet", row_group_size=7)
    rows = np.array([49, 0, 13, 14, 6, 7])
    out = read_manifest_rows(tmp_path, rows, ("cutout_id", "x0", "f", "not_there"))
    assert list(out.columns) == ["cutout_id", "x0", "f"]
    assert out["cutout_id"].tolist() == rows.tolist() and (out["x0"] == rows * 3).all()
    assert out["f"].tolist() == [f"/a/{i % 4}" for i in rows]
    assert len(read_manifest_rows(tmp_path, [], ("x0",))) == 0
    assert list(read_manifest_rows(tmp_path, [2]).columns) == ["cutout_id", "x0", "f"]
    with pytest.raises(CutoutStoreError, match="out of range"):
        read_manifest_rows(tmp_path, [50], ("x0",))
