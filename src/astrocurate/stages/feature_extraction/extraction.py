"""The computation of a feature run: the model, the batches, the block matrix.

Work is done in blocks of ``shard_rows`` rows. The matrix is pre-allocated as
``features.npy.partial`` and the sidecar written as ``progress/sidecar.json``; after
a block's rows are written and synced to disk, an empty marker ``progress/<start>.done``
is created atomically. One loader reads every block a process computes, in threads
ahead of the device (:func:`cutout_loader`), and the syncs and markers run on a thread
beside the loop. A rerun of the same command after an interruption skips
the finished blocks; the matrix is renamed to ``features.npy`` (and the sidecar to
``features.json``) only when every block is done. Each cutout is preprocessed on its
own (normalised, resized) so its features do not depend on the batch it is in, on the
number of reader threads, or on which process computed its block.

The plan (options, backbone card, device) is :mod:`~astrocurate.stages.feature_extraction.plan`.
The run's lifecycle is elsewhere: one process records it with
:mod:`~astrocurate.stages.feature_extraction.run`, several share it with
:mod:`~astrocurate.stages.feature_extraction.shards`; both compute with this module.
"""

from __future__ import annotations

import copy
import errno
import json
import logging
import os
import sys
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual torch alias

from astrocurate.algorithms import precision
from astrocurate.algorithms.normalization import normalize
from astrocurate.algorithms.normalization_config import NormalizationConfig
from astrocurate.errors import InvalidRunError
from astrocurate.io import cutout_store
from astrocurate.io.atomic import atomic_path, write_text
from astrocurate.io.cutout_store import CutoutReader, read_manifest
from astrocurate.stages.feature_extraction.outputs import FEATURES, SIDECAR, load_features
from astrocurate.stages.feature_extraction.plan import PROGRESS_DIR, Extraction
from astrocurate.tracking import StepRun

log = logging.getLogger(__name__)

PENDING_SIDECAR = "sidecar.json"


# --------------------------------------------------------------------------- data


def plan_batches(window_sizes: np.ndarray, rows: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Split ``rows`` into batches of at most ``batch_size`` rows of one window size.

    Parameters
    ----------
    window_sizes : ndarray of int, shape (n_total,)
        Window size of every row of the manifest.
    rows : ndarray of int, shape (n,)
        Increasing row indices to cover.
    batch_size : int

    Returns
    -------
    list of ndarray of int
    """
    sizes = window_sizes[rows]
    breaks = np.flatnonzero(np.diff(sizes)) + 1
    batches = []
    for run in np.split(rows, breaks):
        batches.extend(np.split(run, range(batch_size, len(run), batch_size)))
    return [b for b in batches if len(b)]


# --------------------------------------------------------------------------- model


class FeatureModel(torch.nn.Module):
    """Astronomy preprocessing around a backbone: raw (B, w, w) cutouts -> (B, D) features.

    Every step is per cutout: normalisation, resizing (bilinear, antialiased),
    channel handling and the backbone's standardisation. The backbone itself may pick
    other kernels for another batch size (timm CNNs on the CPU: ~1e-7), so the batch
    size is recorded and kept within a run (:data:`RESUME_PARAMS`).
    """

    def __init__(self, backbone: Any, size: int, normalization: NormalizationConfig) -> None:
        super().__init__()
        self.backbone = backbone.module
        self.size = int(size)
        self.memory_format = torch.contiguous_format
        self.normalization = normalization
        prep = backbone.preprocessing
        self.in_chans = int(prep.in_chans)
        self.register_buffer("mean", torch.tensor(prep.mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(prep.std, dtype=torch.float32).view(1, -1, 1, 1))

    def prepare(self, raw: torch.Tensor) -> torch.Tensor:
        """Normalise and resize raw cutouts (B, w, w) to model input (B, C, S, S), in float32."""
        x = normalize(raw, self.normalization)[:, None]
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(
                x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False
            )
        x = x.expand(-1, self.in_chans, -1, -1)
        return (x - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return features (B, D) for prepared images (B, C, S, S)."""
        return self.backbone(images.contiguous(memory_format=self.memory_format)).flatten(1)

    def computing_in(self, device: torch.device, wanted: str) -> Any:
        """Return the autocast context of ``--precision wanted`` on ``device``.

        The backbone is first put in the memory layout that goes with that precision
        (:func:`~astrocurate.algorithms.precision.channels_last_pays`); features computed in
        float32 keep the default layout, so their bytes are those of earlier versions.
        """
        channels_last = precision.channels_last_pays(device, wanted, self.backbone)
        self.use_memory_format(torch.channels_last if channels_last else torch.contiguous_format)
        return precision.autocast(device, wanted)

    def use_memory_format(self, memory_format: torch.memory_format) -> None:
        """Compute in ``memory_format`` (the backbone's weights and its input images)."""
        if memory_format != self.memory_format:
            self.backbone.to(memory_format=memory_format)
            self.memory_format = memory_format


# --------------------------------------------------------------------------- stage


def feature_model(plan: Extraction) -> FeatureModel:
    """Return the evaluation-mode model of ``plan`` on its device."""
    model = FeatureModel(plan.backbone, plan.size, plan.options.normalization)
    return model.to(plan.device).eval()


def is_complete(out_dir: Path) -> bool:
    """Whether the matrix is in place: finalised, or killed after the rename."""
    return (out_dir / FEATURES).is_file() and not (out_dir / (FEATURES + ".partial")).is_file()


def prepare_output(plan: Extraction, out_dir: Path) -> bool:
    """Create the progress folder, the pending sidecar and the pre-allocated matrix.

    Safe to call again on a run in progress (nothing done is lost) and, as long as the
    callers hold one lock, from several processes. Returns False when the matrix is
    already complete (a run killed after the final rename), True otherwise.
    """
    if is_complete(out_dir):
        log.info("resuming: the feature matrix is complete; finishing the run")
        return False
    progress = out_dir / PROGRESS_DIR
    progress.mkdir(exist_ok=True)
    pending = progress / PENDING_SIDECAR
    if not pending.is_file():
        write_text(pending, json.dumps(plan.sidecar(), indent=2, default=str))
    _ensure_matrix(out_dir, plan.n_rows, plan.card.dim, plan.options.output_dtype)
    return True


def _ensure_matrix(out_dir: Path, n_rows: int, dim: int, dtype: str) -> None:
    """Pre-allocate the partial matrix unless one of the right shape and dtype exists.

    A new matrix appears under its name only once its header is written and its
    blocks are allocated, so a process that finds it can always open it. A matrix of
    another shape (a corrupted or foreign file) is replaced and every marker dropped.
    """
    path = out_dir / (FEATURES + ".partial")
    if path.is_file():
        try:
            matrix = np.load(path, mmap_mode="r")
            if matrix.shape == (n_rows, dim) and matrix.dtype == np.dtype(dtype):
                return
        except ValueError:  # not a readable .npy file
            pass
        path.unlink()
        for marker in (out_dir / PROGRESS_DIR).glob("*.done"):
            marker.unlink()
    for stale in out_dir.glob(f".tmp-*-{path.name}"):  # left by a process killed here
        stale.unlink()
    with atomic_path(path) as tmp:
        matrix = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(n_rows, dim))
        del matrix
        _reserve_disk(tmp)


def _reserve_disk(path: Path) -> None:
    """Allocate every block of a new sparse file now, so a full disk fails here with ENOSPC.

    A full disk then stops the run before any cutout is computed, not after hours of work.
    Where the system has no ``posix_fallocate`` (macOS), the file stays sparse.
    """
    allocate = getattr(os, "posix_fallocate", None)
    if allocate is None:
        return
    with open(path, "r+b") as handle:
        try:
            allocate(handle.fileno(), 0, os.fstat(handle.fileno()).st_size)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # filesystems without it
                return
            raise


def missing_blocks(out_dir: Path, n_rows: int, block_rows: int) -> list[int]:
    """Return the first rows of the blocks not done yet (none once the matrix is complete)."""
    if is_complete(out_dir):
        return []
    return [s for s in range(0, n_rows, block_rows) if not _marker(out_dir, s).is_file()]


def compute_blocks(plan: Extraction, out_dir: Path, starts: list[int], progress: bool) -> int:
    """Compute the blocks of ``starts`` that are not done yet; return the cutouts computed.

    The matrix must exist (:func:`prepare_output`). Each block's rows are written and
    synced before its marker is created, so a block is either done or computed again.
    """
    block_rows = plan.options.shard_rows
    todo = [s for s in starts if not _marker(out_dir, s).is_file()]
    if len(todo) < len(starts):
        log.info("resuming: %d of %d blocks already done", len(starts) - len(todo), len(starts))
    if not todo:
        return 0
    total = sum(_block_len(s, block_rows, plan.n_rows) for s in starts)
    done = total - sum(_block_len(s, block_rows, plan.n_rows) for s in todo)
    bar = _progress_bar(total, done, progress)
    blocks = [np.arange(s, s + _block_len(s, block_rows, plan.n_rows)) for s in todo]
    computed, model = 0, feature_model(plan)
    precision.hint_bf16(plan.device, plan.options.precision, model.backbone)
    for ids in write_blocks(
        plan.merged.output_dir,
        blocks,
        out_dir / (FEATURES + ".partial"),
        [_marker(out_dir, s) for s in todo],
        model,
        plan.options,
        plan.batch_size,
        plan.workers,
        plan.device,
    ):
        computed += len(ids)
        if bar is not None:
            bar.update(len(ids))
    if bar is not None:
        bar.close()
    return computed


def write_blocks(
    merged_dir: Path,
    blocks: list[np.ndarray],
    matrix_path: Path,
    markers: list[Path],
    model: FeatureModel,
    options: Any,
    batch_size: int,
    workers: int,
    device: torch.device,
) -> Iterator[np.ndarray]:
    """Write the features of ``blocks`` into the matrix; yield each batch's rows once written.

    Parameters
    ----------
    merged_dir : Path
        The cutout or merge run directory the cutouts are read from.
    blocks : list of ndarray of int
        Consecutive increasing rows of each block, blocks in increasing order.
    matrix_path : Path
        An existing ``.npy`` matrix of every row; the blocks' rows are written in place.
    markers : list of Path
        One per block: created (empty, atomically) once the block's rows are on disk.
    model, options, batch_size, workers, device
        As for :func:`_features_of`; ``batch_size`` rows at most per batch.

    Notes
    -----
    One loader reads the batches of all the blocks, ahead of the device. A block's
    sync and marker run on a thread while the next blocks are computed; every block
    whose rows were all written is marked before this returns or raises.
    """
    window_sizes = read_manifest(merged_dir, ["window_size"])["window_size"].to_numpy()
    batches = [b for rows in blocks for b in plan_batches(window_sizes, rows, batch_size)]
    left = deque((marker, len(rows)) for marker, rows in zip(markers, blocks, strict=True))
    with _MatrixRows(matrix_path, options.output_dtype) as matrix:
        for ids, feats in _features_of(merged_dir, batches, model, options, workers, device):
            matrix.write(ids, feats)
            marker, rows_left = left.popleft()
            if rows_left > len(ids):  # a batch never spans two blocks
                left.appendleft((marker, rows_left - len(ids)))
            else:
                matrix.mark_when_synced(marker)
            yield ids


class _MatrixRows:
    """Rows written into an ``.npy`` matrix in place; markers created once they are on disk.

    Rows go in with ``pwrite``. :meth:`mark_when_synced` hands a marker to one thread that
    syncs the file (``fsync``, which releases the GIL, unlike a memory map's flush) and
    then creates the marker, so the feature loop goes on meanwhile. A failed sync is
    raised by the next call, or on leaving the ``with`` block, which waits for every
    marker handed over, even when the block raises.
    """

    def __init__(self, path: Path, dtype: str) -> None:
        header = np.load(path, mmap_mode="r")  # made by _ensure_matrix: 2-D, of ``dtype``
        self._offset, self._row_bytes = header.offset, header.strides[0]
        self._dtype = np.dtype(dtype)
        del header
        self._fd = os.open(path, os.O_WRONLY)
        self._syncs = ThreadPoolExecutor(1, thread_name_prefix="feature-sync")
        self._pending: deque[Future[None]] = deque()

    def write(self, ids: np.ndarray, feats: np.ndarray) -> None:
        """Write ``feats`` (B, D) as the consecutive rows ``ids`` (B >= 1)."""
        if int(ids[-1]) - int(ids[0]) != len(ids) - 1:
            raise ValueError("a batch's rows must be consecutive")
        view = memoryview(np.ascontiguousarray(feats, dtype=self._dtype)).cast("B")
        position = self._offset + int(ids[0]) * self._row_bytes
        while view:  # a regular file takes it all at once, short of a signal
            written = os.pwrite(self._fd, view, position)
            view, position = view[written:], position + written

    def mark_when_synced(self, marker: Path) -> None:
        """Create ``marker`` once every row written so far is on disk."""
        while self._pending and self._pending[0].done():
            self._pending.popleft().result()  # raises a failed sync
        self._pending.append(self._syncs.submit(self._sync_then_mark, marker))

    def _sync_then_mark(self, marker: Path) -> None:
        os.fsync(self._fd)
        _touch_atomic(marker)

    def __enter__(self) -> _MatrixRows:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            self._syncs.shutdown()
            os.close(self._fd)


def _block_len(start: int, block_rows: int, n_rows: int) -> int:
    return min(block_rows, n_rows - start)


def cutout_loader(
    merged_dir: Path, batches: list[np.ndarray], workers: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(cutout ids, raw cutouts (B, w, w) float32)`` of each batch, in order.

    ``workers`` threads read ahead, two batches each, every thread with its own open files
    (a copy of one :class:`~astrocurate.io.cutout_store.CutoutReader`; with 0, this thread
    reads), together no more than one reader's (a thread goes through the manifest in
    order, so it needs few at a time). A batch is one copy from the memory-mapped files
    (a slice of a copied store, a window at a time from a virtual store's mosaic), which
    releases the GIL, straight into pinned memory for CUDA: no worker processes to start,
    no copy through shared memory, no pinning thread.
    """
    budget = max(2, cutout_store.MAX_OPEN // max(1, workers))  # open files, shared out
    store = CutoutReader.from_directory(merged_dir, budget)  # the manifest, read once
    local, opened = threading.local(), [store]
    pinned = device.type == "cuda"
    cuda_index = None
    if pinned:
        cuda_index = torch.cuda.current_device() if device.index is None else device.index

    def read(ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        if not hasattr(local, "reader"):
            if pinned:  # pin in this device's context, not device 0's (a new thread's)
                torch.cuda.set_device(cuda_index)
            local.reader = store if workers == 0 else copy.copy(store)  # files of its own
            opened.append(local.reader)
        w = local.reader.window_size(ids[0])
        raw = torch.empty((len(ids), w, w), dtype=torch.float32, pin_memory=pinned)
        local.reader.read(ids, out=raw.numpy())
        return torch.from_numpy(ids), raw

    try:
        if workers == 0:
            yield from map(read, batches)
            return
        with ThreadPoolExecutor(workers, thread_name_prefix="cutout-reader") as pool:
            ahead: deque[Future[tuple[torch.Tensor, torch.Tensor]]] = deque()
            try:
                for ids in batches:
                    ahead.append(pool.submit(read, ids))
                    if len(ahead) > 2 * workers:
                        yield ahead.popleft().result()
                while ahead:
                    yield ahead.popleft().result()
            finally:
                for future in ahead:
                    future.cancel()
    finally:
        for reader in opened:
            reader.close()


def _features_of(merged_dir, batches, model, options, workers, device):
    """Yield (cutout ids, features as float32 numpy) batch by batch, in order.

    On CUDA the copy of the next batch to the device is started before this one is
    computed, on a stream of its own, so copies overlap computation (:class:`_DeviceBatch`);
    a batch's features are yielded once the next batch is queued on the device, so the
    device never waits for the host to copy them back (:class:`_HostFeatures`).
    """
    loader = cutout_loader(merged_dir, batches, workers, device)
    autocast = model.computing_in(device, options.precision)
    lag = 1 if device.type == "cuda" else 0
    copies = torch.cuda.Stream(device) if device.type == "cuda" else None

    def computed() -> Iterator[_HostFeatures]:
        staged = (_DeviceBatch(ids, raw, device, copies) for ids, raw in loader)
        for ids, raw in _lagging(staged, lag):
            images = model.prepare(raw)
            with autocast:
                feats = model(images)
            yield _HostFeatures(ids, feats)

    with torch.inference_mode():
        yield from _lagging(computed(), lag)


def _lagging(items: Iterable[Any], lag: int) -> Iterator[Any]:
    """Yield each item's ``result()`` once ``lag`` more items are started, the last at the end.

    The items are work started on the device (:class:`_DeviceBatch`, :class:`_HostFeatures`).
    """
    pending: deque[Any] = deque()
    for item in items:
        pending.append(item)
        if len(pending) > lag:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


class _DeviceBatch:
    """One batch of raw cutouts on its way to the device.

    On CUDA the copy from pinned memory runs on ``stream``, beside the stream that
    computes, and :meth:`result` makes the computing stream wait for it; on the CPU
    there is nothing to copy.
    """

    def __init__(
        self,
        ids: torch.Tensor,
        raw: torch.Tensor,
        device: torch.device,
        stream: torch.cuda.Stream | None,
    ) -> None:
        self._ids = ids
        self._copied: torch.cuda.Event | None = None
        if stream is None:
            self._raw = raw.to(device)
            return
        with torch.cuda.stream(stream):
            self._raw = raw.to(device, non_blocking=True)
            self._copied = stream.record_event()

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (cutout ids, raw cutouts on the device), ready for the current stream."""
        if self._copied is not None:
            computing = torch.cuda.current_stream(self._raw.device)
            computing.wait_event(self._copied)
            self._raw.record_stream(computing)  # not reused before it is computed on
        return self._ids, self._raw


class _HostFeatures:
    """One batch's features on their way to the host, as float32.

    From a CUDA device the copy into pinned memory is asynchronous and :meth:`result`
    waits for it only; from the CPU the features are copied at once, as ``.cpu()`` does.
    """

    def __init__(self, ids: torch.Tensor, feats: torch.Tensor) -> None:
        self.ids = ids.numpy()
        self._copied: torch.cuda.Event | None = None
        if feats.is_cuda:
            feats = feats.float()
            self._host = torch.empty(feats.shape, dtype=torch.float32, pin_memory=True)
            self._host.copy_(feats, non_blocking=True)
            self._copied = torch.cuda.Event()
            self._copied.record(torch.cuda.current_stream(feats.device))
        else:
            self._host = feats.float().cpu()

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """Return (cutout ids, features (B, D) float32) once the copy is done."""
        if self._copied is not None:
            self._copied.synchronize()
        return self.ids, self._host.numpy()


def _marker(out_dir: Path, start: int) -> Path:
    return out_dir / PROGRESS_DIR / f"{start:012d}.done"


def _touch_atomic(path: Path) -> None:
    write_text(path, "")


def _progress_bar(total: int, done: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=min(done, total),
        unit="img",
        desc="features",
        file=sys.stderr,
        smoothing=0.1,
    )


def finalise(out_dir: Path) -> None:
    """Move the sidecar and the matrix into place, drop the progress folder.

    Every step can be repeated: a run killed half-way through is finalised by the next
    attempt. The caller checks that every block is done.
    """
    progress = out_dir / PROGRESS_DIR
    pending = progress / PENDING_SIDECAR
    if pending.is_file():
        os.replace(pending, out_dir / SIDECAR)
    elif not (out_dir / SIDECAR).is_file():
        raise InvalidRunError(f"{out_dir}: neither {SIDECAR} nor {pending.name} (not resumable)")
    partial = out_dir / (FEATURES + ".partial")
    if partial.is_file():  # else renamed by an attempt killed before the cleanup below
        os.replace(partial, out_dir / FEATURES)
    if progress.is_dir():
        for marker in progress.glob("*"):
            marker.unlink()
        progress.rmdir()


def log_quality(run: StepRun, merged_dir: Path) -> None:
    """Log kNN balanced accuracy on truth classes, when the survey has a truth catalogue.

    The folds are sky patches (:func:`astrocurate.algorithms.quality.sky_patches`), so overlapping
    cutouts never sit on both sides of a split; ``knn_sky_patches`` is their number.
    """
    from astrocurate.algorithms.quality import knn_balanced_accuracy, manifest_sky_patches
    from astrocurate.io.labels import truth_labels_for_manifest

    manifest = read_manifest(merged_dir)
    labels = truth_labels_for_manifest(manifest)
    if labels is None:
        return
    features = load_features(run.output_dir)
    patches = manifest_sky_patches(manifest)
    score = knn_balanced_accuracy(np.asarray(features, dtype=np.float32), labels, groups=patches)
    if score is not None:
        run.log_metrics(
            {"knn_balanced_accuracy": score, "knn_sky_patches": len(np.unique(patches))}
        )
        log.info("kNN balanced accuracy on the truth classes (folds by sky patch): %.3f", score)
