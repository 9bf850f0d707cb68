"""The plan of an evaluation: its options, the sampling run's arms, the labelled cutouts.

Everything is checked before any run is recorded, so that bad input (an option, a label
file, weights of another architecture, a sampling run without baseline) fails in one line
and leaves nothing behind. :func:`plan_evaluation` returns the :class:`Plan` that
:func:`astrocurate.stages.evaluation.run.evaluate` and the shards
(:mod:`astrocurate.stages.evaluation.shards`) carry out. What keys the run is known
without torch; the arms' encoders and the labelled cutouts are loaded and checked by
:meth:`Plan.prepare`, only when there is work to do.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from astrocurate import steps
from astrocurate.algorithms.backbones.spec import sha256
from astrocurate.algorithms.precision import WHERE_COMPUTED, computed_in
from astrocurate.algorithms.ssl.config import AugmentConfig, PretrainConfig
from astrocurate.errors import InvalidArgumentError, InvalidRunError
from astrocurate.stages.curated_sampling.outputs import BASELINE, SELECTED
from astrocurate.stages.curated_sampling.outputs import INFO as SAMPLING_INFO
from astrocurate.stages.evaluation.outputs import TRUTH
from astrocurate.tracking import DerivedParam, require_run
from astrocurate.validation import check_choice, check_int

log = logging.getLogger(__name__)

STEP = steps.EVALUATION
#: Parameters left out of the reuse key, and those an unfinished run resumes only with:
#: as asked, and as this machine resolves them (``auto`` is a GPU on one node and the CPU
#: on another; ``--precision bf16`` is fp32 on a CPU without bf16 instructions), so that
#: no arm's pretraining is resumed, nor a shard joined, where it would compute otherwise.
VOLATILE_PARAMS = ("device", "precision", "device_type", "computed_precision")
RESUME_PARAMS: dict[str, str | DerivedParam] = {
    "device": "--device",
    "precision": "--precision",
    "device_type": "--device",
    "computed_precision": DerivedParam(
        "--precision", f"resume it where --precision computes in {{value}} ({WHERE_COMPUTED})"
    ),
}
ARMS = ("curated", "random", "pool")
PROBES = ("knn", "linear")


@dataclass(frozen=True)
class EvaluationOptions:
    """How to pretrain and score each arm (the same for every arm).

    Attributes
    ----------
    arms : tuple of str
        Arms to pretrain, some of :data:`ARMS` (empty: only ``--weights`` encoders).
    seeds : int
        Number of seeds (0 .. seeds-1), >= 1; the spread is over these.
    method : {'simclr', 'byol'}
    images_seen : int
        Pretraining budget per arm and seed, in images (not epochs).
    batch_size, image_size : int
    learning_rate : float
    max_per_category : int
        At most this many labelled cutouts per category are scored.
    folds : int
        Cross-validation folds of the probes (fewer when the sky has fewer cells).
    knn_k : int
        Neighbours of the kNN probe.
    device : str
        ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
    precision : {'auto', 'fp32', 'bf16'}
        What pretraining computes in: ``auto`` is bf16 autocast on CUDA and float32 on
        the CPU; ``bf16`` autocasts on the CPU too where it has bf16 instructions.
    """

    arms: tuple[str, ...] = ("curated", "random")
    seeds: int = 3
    method: str = "simclr"
    images_seen: int = 50_000
    batch_size: int = 128
    image_size: int = 64
    learning_rate: float = 1e-3
    max_per_category: int = 200
    folds: int = 5
    knn_k: int = 20
    device: str = "auto"
    precision: str = "auto"

    def validate(self) -> EvaluationOptions:
        """Return a copy with the arms in canonical order; refuse bad values in one line."""
        for arm in self.arms:
            check_choice("--arms", arm, ARMS)
        check_int("--seeds", self.seeds, 1)
        self.pretrain_config(0)  # --method, --images-seen, --batch-size, --image-size, ...
        check_int("--max-per-category", self.max_per_category, 2)
        check_int("--folds", self.folds, 2)
        check_int("--knn-k", self.knn_k, 1)
        arms = tuple(a for a in ARMS if a in self.arms)
        return replace(self, arms=arms)

    def pretrain_config(self, seed: int) -> PretrainConfig:
        """Return the pretraining of every arm for ``seed``."""
        return PretrainConfig(
            method=self.method,
            images_seen=self.images_seen,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            seed=seed,
            augment=AugmentConfig(image_size=self.image_size),
            precision=self.precision,
        ).validate()

    def params(self) -> dict[str, Any]:
        """Return the options as MLflow parameters."""
        return {**asdict(self), "arms": ",".join(self.arms) or "none"}


@dataclass(frozen=True)
class SamplingInputs:
    """The sampling run evaluated and the rows of its arms."""

    run_id: str
    directory: Path
    merged_dir: Path
    curated: np.ndarray
    random: np.ndarray
    pool: np.ndarray


def _resolve_sampling(sampling_id: str) -> SamplingInputs:
    """Check the sampling run and read its sample, baseline and pool rows."""
    record = require_run(sampling_id, steps.CURATED_SAMPLING, "--sampling-id")
    directory = record.output_dir
    info = json.loads((directory / SAMPLING_INFO).read_text())
    if info.get("baseline") == "random":
        raise InvalidRunError(
            f"--sampling-id: run {record.run_id} was drawn with --baseline random, so it has "
            "no curated arm; evaluate a balanced sampling run"
        )
    if not (directory / BASELINE).is_file():
        raise InvalidRunError(
            f"--sampling-id: run {record.run_id} has no random baseline ({BASELINE}); "
            "rerun scripts/random_sampling.py with this version to write one"
        )
    from astrocurate.stages.clustering.outputs import INPUT_INDICES

    pool = np.load(Path(info["clustering_dir"]) / INPUT_INDICES)
    return SamplingInputs(
        record.run_id,
        directory,
        Path(info["merged_dir"]),
        np.load(directory / SELECTED),
        np.load(directory / BASELINE),
        np.asarray(pool, dtype=np.int64),
    )


@dataclass(frozen=True)
class Arm:
    """What one arm pretrains on, or the encoder it brings.

    Attributes
    ----------
    name : str
        ``curated``, ``random``, ``pool`` or ``weights_<file stem>``.
    rows : ndarray of int, optional
        Merged manifest rows to pretrain on (None for an arm with ``weights``).
    weights : Path, optional
        An encoder file trained elsewhere.
    """

    name: str
    rows: np.ndarray | None = None
    weights: Path | None = None

    @property
    def pretrained_here(self) -> bool:
        """Whether this arm pretrains its encoder here (no weights file)."""
        return self.weights is None


@dataclass(frozen=True)
class Plan:
    """Everything one evaluation run needs.

    Attributes
    ----------
    options : EvaluationOptions
    sampling : SamplingInputs
    arms : list of Arm
    label_file : Path, optional
        The labels given; None: the survey's truth catalogue.
    root : Path
        Parent of the run directory.
    params : dict
        The run's parameters (options, label file and weights hashes, output path).
    """

    options: EvaluationOptions
    sampling: SamplingInputs
    arms: list[Arm]
    label_file: Path | None
    root: Path
    params: dict[str, Any]

    @cached_property
    def labelled(self) -> Any:
        """The labelled cutouts scored (a :class:`~.labelled.LabelledSet`), read once."""
        from astrocurate.stages.evaluation.labelled import labelled_set

        sampling, options = self.sampling, self.options
        return labelled_set(sampling.merged_dir, self.label_file, options.max_per_category)

    @cached_property
    def device(self) -> Any:
        """The torch device of the pretraining (``auto`` resolved, CUDA checked)."""
        from astrocurate.algorithms.kmeans.rows import resolve_device

        return resolve_device(self.options.device)

    def prepare(self) -> dict[str, str]:
        """Load what the work needs, so that a bad input fails before any run is recorded.

        Resolves the device, reads the labelled cutouts and loads every ``--weights``
        encoder (weights of another architecture fail here in one line). Not needed to
        reuse a finished run.

        Returns
        -------
        dict
            :meth:`resolved_params`, to be logged with the run.
        """
        from astrocurate.algorithms.ssl import load_encoder

        resolved = self.resolved_params()  # resolves and checks the device
        for arm in self.arms:
            if arm.weights is not None:
                load_encoder(arm.weights)
        self.labelled  # noqa: B018 - reads and checks the labels
        return resolved

    def resolved_params(self) -> dict[str, str]:
        """Return the device type and the precision the pretraining computes in here."""
        return {
            "device_type": self.device.type,
            "computed_precision": computed_in(self.device, self.options.precision),
        }

    def jobs(self) -> list[tuple[int, Arm]]:
        """Every (seed, arm) to score, seed by seed: the order of the scores table."""
        return [(seed, arm) for seed in range(self.options.seeds) for arm in self.arms]

    def folds(self, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Return the probes' folds for ``seed`` (train and test never share sky)."""
        from astrocurate.algorithms.probes import primary_strata, sky_folds

        table = self.labelled.table
        return sky_folds(
            table["ra"].to_numpy(),
            table["dec"].to_numpy(),
            self.labelled.footprint_radius_deg(),
            primary_strata(self.labelled.labels, self.labelled.categories),
            n_folds=self.options.folds,
            seed=seed,
        )


def plan_evaluation(
    sampling_id: str,
    options: EvaluationOptions,
    *,
    labels: Path | None = None,
    weights: tuple[Path, ...] = (),
    output_path: Path | None = None,
) -> Plan:
    """Check the inputs of an evaluation and return its plan (see :func:`evaluate`).

    The labelled cutouts and the weights' architecture are checked by :meth:`Plan.prepare`.
    """
    options = options.validate()
    sampling = _resolve_sampling(sampling_id)
    arms = _arms(sampling, options, weights)
    if not arms:
        raise InvalidArgumentError("--arms: nothing to evaluate; name an arm or pass --weights")
    if labels is not None and not Path(labels).is_file():
        raise InvalidArgumentError(f"{labels}: no such label file")
    root = Path(output_path).resolve() if output_path else sampling.directory.parent.parent
    params = {
        **options.params(),
        "labels": str(labels) if labels is not None else TRUTH,
        "labels_sha256": sha256(Path(labels)) if labels else "none",
        "weights": ",".join(f"{a.name}:{sha256(a.weights)}" for a in arms if a.weights) or "none",
        "output_path": str(root),
    }
    plan = Plan(options, sampling, arms, labels, root, params)
    if options.device.startswith("cuda"):
        plan.device  # noqa: B018 - asked for by name: refuse it now where there is no CUDA
    return plan


def _arms(
    sampling: SamplingInputs, options: EvaluationOptions, weights: tuple[Path, ...]
) -> list[Arm]:
    """Return the arms to evaluate (their weights files are loaded by :meth:`Plan.prepare`)."""

    def rows(name: str) -> np.ndarray:
        if name == "pool":
            return _pool_draw(sampling, options)
        return sampling.curated if name == "curated" else sampling.random

    arms = [Arm(name, rows=rows(name)) for name in options.arms]
    names = set(options.arms)
    for path in weights:
        path = Path(path).expanduser().resolve()
        if not path.is_file():
            raise InvalidArgumentError(f"--weights: no file {str(path)!r}")
        name = f"weights_{path.stem}"
        if name in names:
            raise InvalidArgumentError(f"--weights: two files named {path.stem!r}")
        names.add(name)
        arms.append(Arm(name, weights=path))
    return arms


def _pool_draw(sampling: SamplingInputs, options: EvaluationOptions) -> np.ndarray:
    """Draw ``min(pool, images seen)`` pool rows uniformly (what the budget can see)."""
    size = min(len(sampling.pool), options.images_seen)
    rng = np.random.default_rng(np.random.SeedSequence([len(sampling.pool), size]))
    return np.sort(rng.choice(sampling.pool, size, replace=False))
