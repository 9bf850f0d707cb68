"""A ``torch.utils.data.Dataset`` over a curated sample, for training scripts.

Three lines give a training loop its data::

    from astrocurate.dataset import CuratedDataset
    dataset = CuratedDataset("RUN_ID", window_size=64)  # run ID or run directory
    loader = torch.utils.data.DataLoader(dataset, batch_size=256, shuffle=True, num_workers=8)

Items are float32 tensors of shape (1, W, W), FITS orientation (row 0 is the bottom of the
sky), blank pixels already filled. Pixels come from the ``npy`` export when the run has
one (one memory-mapped array per window size), otherwise from the survey's cutout store
through :class:`~astrocurate.io.cutout_store.CutoutReader`; both work in worker processes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from astrocurate.errors import InvalidArgumentError
from astrocurate.io.cutout_store import MANIFEST, MOSAICS, CutoutReader
from astrocurate.stages.curated_sampling.outputs import EXPORT_DIR


def resolve_sample_dir(run: str | Path) -> Path:
    """Return the directory of a ``curated_sampling`` run given its ID or its directory.

    Parameters
    ----------
    run : str or Path
        An existing directory, or the ID of a finished ``curated_sampling`` run.
    """
    from astrocurate.stages.curated_sampling.run import STEP
    from astrocurate.tracking import require_run

    path = Path(run)
    if path.is_dir():
        return path.resolve()
    return require_run(str(run), STEP, "curated run").output_dir


class CuratedDataset(torch.utils.data.Dataset):
    """The cutouts of a curated sample, in the order of its curated manifest.

    Parameters
    ----------
    run : str or Path
        ``curated_sampling`` run ID or directory.
    window_size : int, optional
        Keep only cutouts of this side. Required to batch a sample that mixes sizes with
        the default collate function.
    transform : callable, optional
        Applied to each (1, W, W) tensor (e.g. a normalisation or augmentation).
    return_metadata : bool
        Return ``(image, row)`` with the cutout's manifest row as a dict, instead of the
        image alone.

    Attributes
    ----------
    manifest : DataFrame
        The curated manifest rows this dataset serves (``cutout_id``, ``ra``, ``dec``,
        ``cluster_l1`` ...).
    """

    def __init__(
        self,
        run: str | Path,
        *,
        window_size: int | None = None,
        transform: Callable[[torch.Tensor], Any] | None = None,
        return_metadata: bool = False,
    ) -> None:
        from astrocurate.stages.curated_sampling.run import load_sample

        self.directory = resolve_sample_dir(run)
        info, manifest = load_sample(self.directory)
        if window_size is not None:
            sizes = sorted(manifest["window_size"].unique().tolist())
            if window_size not in sizes:
                raise InvalidArgumentError(
                    f"window_size={window_size}: the sample holds sizes {sizes}"
                )
            manifest = manifest[manifest["window_size"] == window_size]
        self.manifest = manifest.reset_index(drop=True)
        self.transform = transform
        self.return_metadata = return_metadata
        self._exported = _exported_rows(self.directory, self.manifest)
        self._reader = None if self._exported is not None else _reader(info, self.manifest)
        self._arrays: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.manifest)

    def __getitem__(self, index: int) -> Any:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range 0..{len(self) - 1}")
        image = torch.from_numpy(self._pixels(index)).unsqueeze(0)
        if self.transform is not None:
            image = self.transform(image)
        if self.return_metadata:
            return image, self.manifest.iloc[index].to_dict()
        return image

    def _pixels(self, index: int) -> np.ndarray:
        if self._reader is not None:
            return self._reader[index]
        name, row = self._exported[index]
        if name not in self._arrays:
            self._arrays[name] = np.load(self.directory / EXPORT_DIR / "npy" / name, mmap_mode="r")
        return np.array(self._arrays[name][row], dtype=np.float32)

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without open memory maps (DataLoader workers reopen them)."""
        return {**self.__dict__, "_arrays": {}}


def _exported_rows(directory: Path, manifest: pd.DataFrame) -> list[tuple[str, int]] | None:
    """``(file, row)`` of each cutout in the npy export, or None without an export."""
    path = directory / EXPORT_DIR / "npy" / MANIFEST
    if not path.is_file():
        return None
    exported = pd.read_parquet(path, columns=["cutout_id", "export_file", "export_row"])
    where = exported.set_index("cutout_id").loc[manifest["cutout_id"]]
    return list(zip(where["export_file"], where["export_row"].astype(int), strict=True))


def _reader(info: dict[str, Any], manifest: pd.DataFrame) -> CutoutReader:
    """Read the cutouts from the survey's store (merged manifests hold absolute paths)."""
    merged_dir = Path(info["merged_dir"])
    mosaics_path = merged_dir / MOSAICS
    mosaics = pd.read_parquet(mosaics_path) if mosaics_path.is_file() else None
    return CutoutReader(manifest, merged_dir, mosaics)
