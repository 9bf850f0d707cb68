"""A feature run's options and plan, resolved without torch wherever that is possible.

Everything in a feature run's reuse key is known here without building the model: the
merge run, the options, the number of rows and, for the scattering family, the backbone's
card (:func:`~astrocurate.algorithms.backbones.describe_backbone`). The device, the loader
workers and the model itself are resolved only when there is work to do, so a rerun that
reuses a finished run never imports torch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from astrocurate import steps
from astrocurate.algorithms.backbones.describe import describe_backbone
from astrocurate.algorithms.backbones.scattering_spec import is_scattering
from astrocurate.algorithms.backbones.spec import BackboneCard
from astrocurate.algorithms.normalization_config import NormalizationConfig
from astrocurate.algorithms.precision import PRECISIONS, WHERE_COMPUTED, computed_in
from astrocurate.cpus import usable_cpus
from astrocurate.errors import InvalidArgumentError
from astrocurate.io.cutout_store import manifest_row_count
from astrocurate.tracking import DerivedParam, RunRecord, require_run, run_key

__all__ = [
    "DEFAULT_MODEL",
    "OUTPUT_DTYPES",
    "PRECISIONS",
    "PROGRESS_DIR",
    "RESUME_PARAMS",
    "STEP",
    "VOLATILE_PARAMS",
    "Extraction",
    "FeatureOptions",
    "default_workers",
    "plan_extraction",
]

STEP = steps.FEATURE_EXTRACTION
#: Folder of a run in progress: the pending sidecar and one marker per finished block.
PROGRESS_DIR = "progress"
SOURCE_STEP = steps.source_of(STEP)
#: Chosen by kNN balanced accuracy on the demo classes with folds by sky patch
#: (BENCHMARKS.md, "Quality"): the best of the offline backbones at every patch size.
DEFAULT_MODEL = "scattering-j4-rot-renorm-max"
OUTPUT_DTYPES = ("float32", "float16")
#: Parameters left out of the run key: a finished run is reused whatever their values.
VOLATILE_PARAMS = ("batch_size", "workers", "device", "device_type", "computed_precision")


def _computed_precision(model: str, device: Any, wanted: str) -> str:
    """Return the precision backbone ``model`` computes in on ``device`` for ``wanted``.

    The scattering backbones' FFTs compute in float32 whatever ``--precision``.
    """
    return "fp32" if is_scattering(model) else computed_in(device, wanted)


def _computed_before_recorded(recorded: Mapping[str, str]) -> str:
    """Return the precision a run computed in if it started before it was recorded.

    Those versions autocast on CUDA only: ``--precision bf16`` computed in fp32 on a CPU.
    """
    on_cuda = recorded.get("device_type") == "cuda"
    if not on_cuda or is_scattering(recorded.get("model", "")):
        return "fp32"
    return recorded.get("precision", "fp32")


#: Of those, the ones that can change the features' bytes at float rounding (on the CPU
#: the default backbone differs by up to 4.8e-7 between batch sizes 1 and 33, a timm CNN by
#: 1.2e-7; benchmarks/batch_invariance.py): an unfinished run is resumed or joined only
#: with the values it started with, so that no matrix mixes two of them. The precision a
#: process computes in follows from ``--precision`` and the machine: ``bf16`` is fp32 on a
#: CPU without bf16 instructions, so a SLURM array over mixed CPUs cannot mix the two.
RESUME_PARAMS: dict[str, str | DerivedParam] = {
    "batch_size": "--batch-size",
    "device_type": "--device",
    "computed_precision": DerivedParam(
        "--precision",
        f"resume it where --precision computes in {{value}} ({WHERE_COMPUTED})",
        implied=_computed_before_recorded,
    ),
}
#: What ``--device`` accepts; whether CUDA is there is checked when the device is used.
_DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


@dataclass(frozen=True)
class FeatureOptions:
    """Parameters of a feature-extraction run (all logged).

    Attributes
    ----------
    model : str
        Backbone name (see :func:`astrocurate.algorithms.backbones.registry.list_backbones`).
    weights : str, optional
        Local weights file (safetensors or torch state dict).
    arch : str, optional
        Architecture for a self-supervised checkpoint (``resnet18``, ...).
    pooling : str, optional
        Which layer/pooling gives the vector; default per backbone.
    channels : str
        ``repeat`` the single astronomy channel to 3, or ``fold`` the first convolution.
    resize : int, optional
        Side the cutouts are resized to; default the backbone's input size.
    normalization : NormalizationConfig
        Per-cutout intensity normalisation.
    precision : str
        ``fp32``, or ``bf16``/``fp16`` autocast on GPU; ``bf16`` also on a CPU with bf16
        instructions (:mod:`~astrocurate.algorithms.precision`).
    output_dtype : str
        ``float32`` or ``float16`` feature matrix.
    shard_rows : int
        Rows per resumable block (the unit of resuming and of sharding).
    """

    model: str = DEFAULT_MODEL
    weights: str | None = None
    arch: str | None = None
    pooling: str | None = None
    channels: str = "repeat"
    resize: int | None = None
    normalization: NormalizationConfig = field(default_factory=NormalizationConfig)
    precision: str = "fp32"
    output_dtype: str = "float32"
    shard_rows: int = 8192

    def validate(self) -> None:
        """Raise :class:`InvalidArgumentError` on the first bad option."""
        self.normalization.validate()
        if self.precision not in PRECISIONS:
            raise InvalidArgumentError(
                f"--precision: expected one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )
        if self.output_dtype not in OUTPUT_DTYPES:
            raise InvalidArgumentError(
                f"--dtype: expected one of {', '.join(OUTPUT_DTYPES)}, got {self.output_dtype!r}"
            )
        if self.resize is not None and self.resize < 8:
            raise InvalidArgumentError(
                f"--resize: expected a side of at least 8, got {self.resize}"
            )
        if self.shard_rows < 1:
            raise InvalidArgumentError(f"--shard-rows: expected >= 1, got {self.shard_rows}")
        if self.channels not in ("repeat", "fold"):
            raise InvalidArgumentError(
                f"--channels: expected repeat or fold, got {self.channels!r}"
            )

    def backbone_options(self) -> dict[str, Any]:
        """Return the keyword arguments of ``create_backbone`` and ``describe_backbone``."""
        return {
            "weights": self.weights,
            "arch": self.arch,
            "pooling": self.pooling,
            "channels": self.channels,
            "input_size": self.resize,
        }


def default_workers(device: Any) -> int:
    """Return reader threads that leave the CPU cores to the model on CPU, feed a GPU."""
    cores = usable_cpus()
    if device.type == "cuda":
        return min(8, cores)
    return 0 if cores <= 2 else min(4, cores // 4)


@dataclass
class Extraction:
    """A feature run resolved from its arguments, before any run is recorded.

    The device, the workers and the backbone's module are resolved on first use
    (:attr:`device`, :attr:`workers`, :attr:`backbone`), never by a rerun that reuses a
    finished run.

    Attributes
    ----------
    merged : RunRecord
        The finished ``merge_cutouts`` run whose cutouts are featurised.
    options : FeatureOptions
        Model and preprocessing.
    card : BackboneCard
        What identifies the backbone's features (dimension, layer, weights hash, ...).
    size : int
        Side of the model's input images.
    n_rows : int
        Rows of the merge's manifest, rows of the matrix.
    batch_size : int
        Cutouts per forward pass (see :data:`RESUME_PARAMS`).
    requested_device : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` as asked.
    requested_workers : int, optional
        Reader threads as asked (they never change the features); None: the default.
    root : Path
        Parent of the ``feature_extraction`` run directories.
    """

    merged: RunRecord
    options: FeatureOptions
    card: BackboneCard
    size: int
    n_rows: int
    batch_size: int
    requested_device: str
    requested_workers: int | None
    root: Path
    built: Any = field(default=None, repr=False)  # the Backbone, once built

    @cached_property
    def device(self) -> Any:
        """The torch device the model runs on (``auto`` resolved; CUDA checked)."""
        from astrocurate.algorithms.kmeans.rows import resolve_device

        return resolve_device(self.requested_device)

    @property
    def workers(self) -> int:
        """Threads reading the cutouts ahead of the model (0: read in the loop)."""
        if self.requested_workers is not None:
            return self.requested_workers
        return default_workers(self.device)

    @property
    def backbone(self) -> Any:
        """The built :class:`~astrocurate.algorithms.backbones.Backbone` (made once)."""
        if self.built is None:
            from astrocurate.algorithms.backbones.registry import create_backbone

            self.built = create_backbone(self.options.model, **self.options.backbone_options())
        return self.built

    @property
    def key_params(self) -> dict[str, Any]:
        """Every parameter known without torch: the reuse key's and the batch size."""
        options = self.options
        params = {k: v for k, v in asdict(options).items() if k != "normalization"}
        params.update({f"norm_{k}": v for k, v in asdict(options.normalization).items()})
        prep = self.card.preprocessing
        params.update(
            input_size=self.size,
            model_input_size=prep.input_size,
            in_chans=prep.in_chans,
            model_mean=list(prep.mean),
            model_std=list(prep.std),
            layer=self.card.layer,
            feature_dim=self.card.dim,
            weights_sha256=self.card.weights_sha256 or "none",
            n_rows=self.n_rows,
            batch_size=self.batch_size,
        )
        return params

    def device_params(self) -> dict[str, Any]:
        """Return the parameters known once the device is resolved.

        The reader threads, the device, its type and the precision computed in there.
        """
        return {
            "workers": self.workers,
            "device": str(self.device),
            "device_type": self.device.type,  # cuda:0 and cuda:1 compute alike
            "computed_precision": _computed_precision(
                self.options.model, self.device, self.options.precision
            ),
        }

    @property
    def params(self) -> dict[str, Any]:
        """Every parameter, as logged (resolves the device)."""
        return self.key_params | self.device_params()

    @property
    def block_starts(self) -> list[int]:
        """First row of every resumable block, in order (independent of any sharding)."""
        return list(range(0, self.n_rows, self.options.shard_rows))

    @property
    def run_key(self) -> str:
        """The reuse key of the run (:func:`astrocurate.tracking.run_key`), volatile excluded."""
        stable = {k: v for k, v in self.key_params.items() if k not in VOLATILE_PARAMS}
        return run_key(STEP, stable, [self.merged.run_id])

    def sidecar(self) -> dict[str, Any]:
        """Return the content of ``features.json``."""
        params, card = self.key_params, self.card
        return {
            "model": params["model"],
            "layer": card.layer,
            "dim": card.dim,
            "dtype": params["output_dtype"],
            "n_rows": params["n_rows"],
            "weights": params["weights"],
            "weights_sha256": card.weights_sha256,
            "preprocessing": {k: v for k, v in params.items() if k.startswith(("norm_", "model_"))}
            | {"input_size": params["input_size"], "channels": params["channels"]},
            "description": card.description,
        }


def plan_extraction(
    merged_cutouts_id: str,
    options: FeatureOptions | None = None,
    *,
    batch_size: int = 128,
    workers: int | None = None,
    device: str = "auto",
    output_path: Path | None = None,
) -> Extraction:
    """Check the arguments of a feature run and describe its backbone.

    The backbone is built here only when it cannot be described without building it
    (weights, timm and transformers models). ``cuda`` is checked here; ``auto`` is
    resolved on first use, so a rerun that reuses a finished run imports no torch.

    Returns
    -------
    Extraction

    Raises
    ------
    InvalidArgumentError, InvalidRunError, RunNotFoundError, WeightsError
        On the first bad option or an unusable merge run, before any run is recorded.
    """
    options = options or FeatureOptions()
    options.validate()
    if batch_size < 1:
        raise InvalidArgumentError(f"--batch-size: expected >= 1, got {batch_size}")
    if workers is not None and workers < 0:
        raise InvalidArgumentError(
            f"--workers: expected >= 0 (0: no worker processes), got {workers}"
        )
    if not isinstance(device, str) or not _DEVICE_PATTERN.fullmatch(device):
        raise InvalidArgumentError(f"--device: expected auto, cpu, cuda or cuda:N, got {device!r}")
    merged = require_run(merged_cutouts_id, SOURCE_STEP, "--merged-cutouts-id")
    n_rows = manifest_row_count(merged.output_dir)
    card, built = describe_backbone(options.model, **options.backbone_options()), None
    if card is None:
        from astrocurate.algorithms.backbones.registry import create_backbone

        built = create_backbone(options.model, **options.backbone_options())
        card = built.card
    size = options.resize or card.preprocessing.input_size
    root = Path(output_path).resolve() if output_path else merged.output_dir.parent.parent
    plan = Extraction(merged, options, card, size, n_rows, batch_size, device, workers, root, built)
    if device.startswith("cuda"):
        plan.device  # noqa: B018 - asked for by name: refuse it now where there is no CUDA
    return plan
