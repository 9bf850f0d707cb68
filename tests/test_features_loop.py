"""The feature loop's copies back to the host: order, lag, and CPU results unchanged."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from astrocurate.algorithms import precision
from astrocurate.algorithms.normalization_config import NormalizationConfig
from astrocurate.io.cutout_store import MANIFEST, NpyStackWriter
from astrocurate.stages.feature_extraction.extraction import (
    FeatureModel,
    _DeviceBatch,
    _ensure_matrix,
    _features_of,
    _lagging,
    _MatrixRows,
    cutout_loader,
    plan_batches,
    write_blocks,
)


class _Copy:
    """A stand-in for one batch's copy that logs when it is started and when it is read."""

    def __init__(self, log: list[str], i: int) -> None:
        self.log, self.i = log, i
        log.append(f"start {i}")

    def result(self) -> tuple[int, None]:
        self.log.append(f"read {self.i}")
        return self.i, None


@pytest.mark.parametrize(
    ("lag", "expected"),
    [
        (0, ["start 0", "read 0", "start 1", "read 1", "start 2", "read 2"]),
        (1, ["start 0", "start 1", "read 0", "start 2", "read 1", "read 2"]),
    ],
    ids=["cpu", "cuda"],
)
def test_each_batch_is_read_after_the_next_one_is_started_on_cuda_only(
    lag: int, expected: list[str]
) -> None:
    log: list[str] = []
    copies = (_Copy(log, i) for i in range(3))
    assert [i for i, _ in _lagging(copies, lag)] == [0, 1, 2]
    assert log == expected


def test_no_batch_gives_nothing() -> None:
    assert list(_lagging(iter([]), 1)) == []


def _store(directory: Path, n: int, size: int) -> Path:
    """A copied cutout store of ``n`` noise cutouts, some with blank pixels."""
    cutouts = np.random.default_rng(0).normal(0, 1e-3, (n, size, size)).astype(np.float32)
    cutouts[::3, :2] = np.nan
    writer = NpyStackWriter(directory / "pixels.npy", size)
    writer.append(cutouts)
    writer.close()
    columns = {"cutout_id": np.arange(n), "store": "copy", "array_file": "pixels.npy"}
    columns |= {"array_row": np.arange(n), "mosaic_path": "synthetic", "x0": 0, "y0": 0}
    columns |= {"window_size": size, "nan_fraction": 0.0}
    pd.DataFrame(columns).to_parquet(directory / MANIFEST)
    return directory


def test_cpu_features_are_the_models_output_bit_for_bit(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.AdaptiveAvgPool2d(1))
    prep = SimpleNamespace(in_chans=3, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4))
    backbone = SimpleNamespace(module=module, preprocessing=prep)
    model = FeatureModel(backbone, 16, NormalizationConfig()).eval()
    directory = _store(tmp_path, 11, 20)
    batches = plan_batches(np.full(11, 20), np.arange(11), 4)
    options = SimpleNamespace(precision="fp32")
    got = list(_features_of(directory, batches, model, options, 0, torch.device("cpu")))
    raw = torch.from_numpy(np.load(directory / "pixels.npy"))
    assert [ids.tolist() for ids, _ in got] == [b.tolist() for b in batches]
    for ids, feats in got:
        with torch.inference_mode():
            expected = model(model.prepare(raw[ids])).numpy()
        assert feats.dtype == np.float32 and feats.shape == (len(ids), 8)
        assert feats.tobytes() == expected.tobytes()


@pytest.mark.parametrize("has_bf16", [True, False], ids=["bf16-units", "no-bf16-units"])
def test_cpu_features_in_bf16_only_where_the_cpu_has_bf16_units(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, has_bf16: bool
) -> None:
    """bf16 features near the float32 ones; without bf16 units, the float32 ones exactly."""
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: has_bf16)
    directory = _store(tmp_path, 11, 20)
    batches = plan_batches(np.full(11, 20), np.arange(11), 4)
    runs, layouts = {}, {}
    for wanted in ("fp32", "bf16"):
        options, cpu, model = SimpleNamespace(precision=wanted), torch.device("cpu"), _small_model()
        batches_out = _features_of(directory, batches, model, options, 0, cpu)
        runs[wanted] = np.concatenate([features for _, features in batches_out])
        weight = model.backbone[0].weight
        layouts[wanted] = weight.is_contiguous(memory_format=torch.channels_last)
    assert runs["bf16"].dtype == np.float32
    # bf16 convolutions run channels-last; fp32 keeps the default layout (and its bytes)
    assert layouts == {"fp32": False, "bf16": has_bf16}
    if has_bf16:
        assert not np.array_equal(runs["bf16"], runs["fp32"])
        np.testing.assert_allclose(runs["bf16"], runs["fp32"], rtol=0.02, atol=0.02)
    else:
        assert runs["bf16"].tobytes() == runs["fp32"].tobytes()


def test_the_default_scattering_backbone_gives_the_same_features_in_bf16(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its FFTs do not autocast: --precision bf16 leaves its features as they are in fp32."""
    from astrocurate.algorithms.backbones.registry import create_backbone
    from astrocurate.stages.feature_extraction.plan import DEFAULT_MODEL

    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    model = FeatureModel(create_backbone(DEFAULT_MODEL), 64, NormalizationConfig()).eval()
    directory = _store(tmp_path, 9, 32)
    batches = plan_batches(np.full(9, 32), np.arange(9), 4)
    runs = {}
    for wanted in ("fp32", "bf16"):
        options, cpu = SimpleNamespace(precision=wanted), torch.device("cpu")
        batches_out = _features_of(directory, batches, model, options, 0, cpu)
        runs[wanted] = np.concatenate([features for _, features in batches_out])
    assert runs["bf16"].tobytes() == runs["fp32"].tobytes()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_features_come_back_in_order_equal_to_the_cpu_ones(tmp_path: Path) -> None:
    """Copies to and from the device, lagged, give every batch, in order, the CPU's values."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.AdaptiveAvgPool2d(1))
    prep = SimpleNamespace(in_chans=3, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4))
    model = FeatureModel(
        SimpleNamespace(module=module, preprocessing=prep), 16, NormalizationConfig()
    )
    directory = _store(tmp_path, 11, 20)
    batches = plan_batches(np.full(11, 20), np.arange(11), 4)
    options = SimpleNamespace(precision="fp32")
    cpu = list(_features_of(directory, batches, model.eval(), options, 0, torch.device("cpu")))
    model = model.cuda()
    for workers in (0, 3):  # this thread's copies, then reader threads' pinned batches
        cuda = list(_features_of(directory, batches, model, options, workers, torch.device("cuda")))
        assert [ids.tolist() for ids, _ in cuda] == [ids.tolist() for ids, _ in cpu]
        for (_, got), (_, expected) in zip(cuda, cpu, strict=True):
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_are_copied_beside_the_computing_stream_and_waited_for_there() -> None:
    """The copy runs on its own stream, the host never waits, the computation sees it all."""
    device = torch.device("cuda")
    copies = torch.cuda.Stream(device)
    raw = torch.randn(256, 128, 128).pin_memory()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        staged = _DeviceBatch(torch.arange(256), raw, device, copies)
        ids, on_device = staged.result()
        doubled = on_device * 2  # queued on the computing stream, after the copy
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert copies != torch.cuda.current_stream(device)
    assert ids.tolist() == list(range(256)) and on_device.device.type == "cuda"
    assert torch.equal(doubled.cpu(), raw * 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_normalizing_a_batch_on_cuda_never_waits_for_the_device() -> None:
    """No host read in the asinh stretch: a wait would stall the feature loop's queue."""
    from astrocurate.algorithms.normalization import normalize

    batch = torch.randn(64, 64, 64, device="cuda")
    batch[::5, :3] = torch.nan
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        normalize(batch, NormalizationConfig())
    finally:
        torch.cuda.set_sync_debug_mode("default")


def _small_model() -> FeatureModel:
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.AdaptiveAvgPool2d(1))
    prep = SimpleNamespace(in_chans=3, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4))
    backbone = SimpleNamespace(module=module, preprocessing=prep)
    return FeatureModel(backbone, 16, NormalizationConfig()).eval()


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


def _blocks_of(n: int, block_rows: int) -> list[np.ndarray]:
    return [np.arange(s, min(s + block_rows, n)) for s in range(0, n, block_rows)]


def _write(directory: Path, tmp_path: Path, blocks, workers: int = 0):
    """Run :func:`write_blocks` into a new zero matrix; return it, the markers, the generator."""
    matrix = tmp_path / "features.npy.partial"
    np.lib.format.open_memmap(matrix, mode="w+", dtype=np.float32, shape=(23, 8)).flush()
    (tmp_path / "progress").mkdir()
    markers = [tmp_path / "progress" / f"{b[0]:012d}.done" for b in blocks]
    options = SimpleNamespace(precision="fp32", output_dtype="float32")
    written = write_blocks(
        directory, blocks, matrix, markers, _small_model(), options, 4, workers, torch.device("cpu")
    )
    return matrix, markers, written


def test_every_block_is_written_through_one_loader_and_marked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import astrocurate.stages.feature_extraction.extraction as extraction

    loaders = []

    def counted(*args, **kwargs):
        loaders.append(args)
        return cutout_loader(*args, **kwargs)

    monkeypatch.setattr(extraction, "cutout_loader", counted)
    directory = _store(_folder(tmp_path / "store"), 23, 20)
    blocks = _blocks_of(23, 6)
    matrix, markers, written = _write(directory, tmp_path, blocks, workers=2)
    assert np.concatenate(list(written)).tolist() == list(range(23))
    assert len(loaders) == 1, "one loader, its threads started once, for all the blocks"
    assert all(m.is_file() for m in markers)
    model = _small_model()
    raw = torch.from_numpy(np.load(directory / "pixels.npy"))
    batches = [b for rows in blocks for b in plan_batches(np.full(23, 20), rows, 4)]
    with torch.inference_mode():  # the model's kernels may differ with the batch size
        expected = np.concatenate([model(model.prepare(raw[b])).numpy() for b in batches])
    assert np.load(matrix).tobytes() == expected.tobytes()


def test_blocks_written_before_the_loop_stops_are_marked_and_no_others(tmp_path: Path) -> None:
    directory = _store(_folder(tmp_path / "store"), 23, 20)
    blocks = _blocks_of(23, 6)  # batches of 4: rows 0-3, 4-5 | 6-9, 10-11 | ...
    matrix, markers, written = _write(directory, tmp_path, blocks)
    for _ in range(3):
        next(written)
    written.close()  # the consumer stops, as on an interrupt
    assert [m.is_file() for m in markers] == [True, False, False, False]
    rows = np.load(matrix)
    assert np.abs(rows[:10]).sum(axis=1).all() and not rows[10:].any()


def test_a_marker_that_cannot_be_made_fails_the_loop(tmp_path: Path) -> None:
    """A sync or marker fails on the thread beside the loop: the loop raises it."""
    directory = _store(_folder(tmp_path / "store"), 23, 20)
    blocks = _blocks_of(23, 6)
    _, markers, written = _write(directory, tmp_path, blocks)
    (tmp_path / "progress").rmdir()  # the markers' folder is gone
    with pytest.raises(FileNotFoundError, match="progress"):
        list(written)
    assert not any(m.is_file() for m in markers)


def test_reader_threads_give_every_batch_in_order_and_raise_what_a_read_raises(
    tmp_path: Path,
) -> None:
    from astrocurate.io.cutout_store import CutoutStoreError

    directory = _store(_folder(tmp_path / "store"), 23, 20)
    batches = plan_batches(np.full(23, 20), np.arange(23), 2)
    cpu = torch.device("cpu")
    alone = [(i.tolist(), r.numpy()) for i, r in cutout_loader(directory, batches, 0, cpu)]
    threads = [(i.tolist(), r.numpy()) for i, r in cutout_loader(directory, batches, 3, cpu)]
    assert [i for i, _ in threads] == [b.tolist() for b in batches] == [i for i, _ in alone]
    for (_, got), (_, expected) in zip(threads, alone, strict=True):
        assert got.tobytes() == expected.tobytes()
    pixels = np.load(directory / "pixels.npy")
    assert np.concatenate([r for _, r in threads]).tobytes() == pixels.tobytes()

    (directory / "pixels.npy").rename(directory / "moved.npy")
    with pytest.raises(CutoutStoreError, match=r"pixels\.npy: cutout pixel file is missing"):
        list(cutout_loader(directory, batches, 3, cpu))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_reader_threads_fill_pinned_batches_in_order(tmp_path: Path) -> None:
    """Each thread pins in the model's device context; the batches are the CPU reads."""
    directory = _store(_folder(tmp_path / "store"), 23, 20)
    batches = plan_batches(np.full(23, 20), np.arange(23), 4)
    device = torch.device("cuda", torch.cuda.device_count() - 1)
    cpu = list(cutout_loader(directory, batches, 0, torch.device("cpu")))
    cuda = list(cutout_loader(directory, batches, 3, device))
    assert [i.tolist() for i, _ in cuda] == [i.tolist() for i, _ in cpu]
    for (_, got), (_, expected) in zip(cuda, cpu, strict=True):
        assert got.is_pinned() and got.numpy().tobytes() == expected.numpy().tobytes()
        on_device = got.to(device, non_blocking=True)  # blank pixels are NaN: compare bytes
        assert on_device.cpu().numpy().tobytes() == expected.numpy().tobytes()


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open files in /proc")
def test_reader_threads_together_hold_no_more_files_open_than_one_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Threads share one reader's budget: a survey of many mosaics cannot run out of files."""
    from astropy.io import fits

    from astrocurate.io import cutout_store

    n = 40
    directory = _folder(tmp_path / "virtual")
    for i in range(n):
        fits.PrimaryHDU(np.full((6, 6), i, dtype=np.float32)).writeto(directory / f"m{i}.fits")
    columns = {"cutout_id": np.arange(n), "store": "virtual", "array_file": None}
    columns |= {"array_row": -1, "mosaic_path": [str(directory / f"m{i}.fits") for i in range(n)]}
    columns |= {"x0": 1, "y0": 1, "window_size": 4, "nan_fraction": 0.0}
    pd.DataFrame(columns).to_parquet(directory / MANIFEST)
    monkeypatch.setattr(cutout_store, "MAX_OPEN", 8)  # 2 per thread for 4 threads
    before = len(list(Path("/proc/self/fd").iterdir()))
    most = 0
    batches = [np.array([i]) for i in range(n)]
    for ids, raw in cutout_loader(directory, batches, 4, torch.device("cpu")):
        assert float(raw[0, 0, 0]) == ids[0]
        most = max(most, len(list(Path("/proc/self/fd").iterdir())) - before)
    per_mosaic = 4  # astropy's file, the map's file and its mmap, ...
    # 8 mosaics open at most (41 files here); a budget per thread opened 32 (126 files)
    assert most <= 16 * per_mosaic, f"{most} files open for at most 8 mosaics"


def test_the_matrix_is_made_where_the_system_has_no_posix_fallocate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """macOS has no ``os.posix_fallocate``: the matrix is made sparse, and rows go in."""
    import os

    monkeypatch.delattr(os, "posix_fallocate", raising=False)
    _ensure_matrix(tmp_path, 10, 4, "float32")
    path = tmp_path / "features.npy.partial"
    with _MatrixRows(path, "float32") as matrix:
        matrix.write(np.arange(2, 5), np.ones((3, 4), dtype=np.float32))
    written = np.load(path)
    assert written.shape == (10, 4) and written[2:5].sum() == 12 and written.sum() == 12
