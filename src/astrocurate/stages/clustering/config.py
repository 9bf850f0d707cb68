"""Step 4 configuration: :class:`ClusteringConfig` and reading ``config.yaml``.

Holds the config keys and their checks, :func:`load_config`, :func:`parse_overrides`
(``key=value`` tokens), :func:`valid_keys` and the shipped configs
(:func:`shipped_configs_dir`). Used by :mod:`astrocurate.stages.clustering.run`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from astrocurate import steps
from astrocurate.errors import InvalidArgumentError
from astrocurate.launch import SLURM_NAME
from astrocurate.validation import is_int

STEP = steps.CLUSTERING
CONFIG_FILE = "config.yaml"
VALID_DTYPES = ("float32", "float64")
VALID_MATMUL_PRECISIONS = ("highest", "tf32")
VALID_STRATEGIES = ("r", "c")
VALID_INITS = ("k-means++", "random")
#: Per-level keys: a list with one entry per level, or one value for every level.
LEVEL_KEYS = (
    "n_clusters",
    "n_iters",
    "n_splits",
    "n_resampling_steps",
    "sample_size",
    "sampling_strategy",
    "ngpus_per_node",
    "nnodes",
    "nprocs_per_node",
)
#: Keys that do not change the result (resources, checkpoints): left out of the reuse key,
#: and may be edited in config.yaml between 4a and 4b.
VOLATILE_KEYS = (
    "checkpoint_period",
    "device",
    "ngpus_per_node",
    "nnodes",
    "ncpus_per_gpu",
    "nprocs_per_node",
    "slurm_partition",
)


# =========================================================================== config


@dataclass(frozen=True)
class ClusteringConfig:
    """A validated clustering configuration (the keys of ``configs/clusters/*.yaml``).

    Build one with :func:`load_config` or :meth:`from_mapping`; per-level values are
    tuples with one entry per level (level 1 first).

    Attributes
    ----------
    n_levels : int
        Number of levels.
    n_clusters : tuple of int
        Clusters per level; level ``L + 1`` clusters the centroids of level ``L``.
    n_iters : tuple of int
        Lloyd updates of every k-means run.
    n_splits : tuple of int
        Sub-clusters per cluster (1: no split); not combined with resampling.
    n_resampling_steps : tuple of int
        k-means runs per level counting the first full run (1: no resampling).
    sample_size : tuple of int or None
        Inputs taken per cluster by a resampling step (needed when resampling).
    sampling_strategy : tuple of str
        ``'r'`` random members or ``'c'`` the closest to the centroid.
    subset_indices_path : str, optional
        ``.npy`` of feature rows to cluster (default all rows).
    checkpoint_period : int
        Seconds between checkpoints inside a k-means run (0: after every step).
    dtype : str
        Compute dtype, ``float32`` or ``float64``.
    high_precision : str
        ``float32`` or ``float64``, as in the original configs. Centroid sums are
        accumulated in float64 either way (:data:`HIGH_PRECISION_NOTE`); the value is
        recorded as given.
    ngpus_per_node, nnodes : tuple of int
        Resources of each level's job: GPUs per node (0: CPU only) and nodes (more than
        one needs SLURM).
    nprocs_per_node : tuple of int or None
        k-means processes per node of each level (``torch.distributed``, launched by
        ``torchrun`` or ``srun``); None: one per GPU, one on CPU. With GPUs it must equal
        ``ngpus_per_node``. See :meth:`n_processes`.
    ncpus_per_gpu : int
        CPUs of each process (of the job when it is one process).
    slurm_partition : str, optional
        Default SLURM partition (``--slurm_partition`` overrides it).
    seed : int
        Random seed (logged as the run's ``seed``).
    device : str
        ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
    init : str
        ``k-means++`` (greedy) or ``random``.
    tol : float, optional
        Stop a k-means run early once an update lowers the potential by at most ``tol``
        times its value; None runs ``n_iters`` updates.
    matmul_precision : str
        ``highest`` (FP32 products) or ``tf32``: TF32 products on CUDA, with the Lloyd
        assignment in one fused kernel (about 6x faster on an H100; see
        :class:`~astrocurate.algorithms.kmeans.estimator.KMeans`). No effect on the CPU.
    """

    n_levels: int
    n_clusters: tuple[int, ...]
    n_iters: tuple[int, ...]
    n_splits: tuple[int, ...]
    n_resampling_steps: tuple[int, ...]
    sample_size: tuple[int | None, ...]
    sampling_strategy: tuple[str, ...]
    subset_indices_path: str | None = None
    checkpoint_period: int = 600
    dtype: str = "float32"
    high_precision: str = "float64"
    ngpus_per_node: tuple[int, ...] = (1,)
    nnodes: tuple[int, ...] = (1,)
    nprocs_per_node: tuple[int | None, ...] = (None,)
    ncpus_per_gpu: int = 8
    slurm_partition: str | None = None
    seed: int = 0
    device: str = "auto"
    init: str = "k-means++"
    tol: float | None = None
    matmul_precision: str = "highest"

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> ClusteringConfig:
        """Validate a mapping of config keys (raises :class:`InvalidArgumentError`).

        Parameters
        ----------
        mapping : mapping of str to Any
            Keys of :func:`valid_keys`; ``n_clusters`` is required, the others have
            defaults; a per-level key may be one value for every level.

        Returns
        -------
        ClusteringConfig
        """
        unknown = [k for k in mapping if k not in valid_keys()]
        if unknown:
            raise _unknown_key(unknown[0])
        if "n_clusters" not in mapping:
            raise InvalidArgumentError("config: n_clusters is required (a list, one per level)")
        n_levels = _n_levels(mapping)
        values = {**_LEVEL_DEFAULTS, **_SCALAR_DEFAULTS, **mapping, "n_levels": n_levels}
        levels = {k: _per_level(k, values[k], n_levels) for k in LEVEL_KEYS}
        scalars = {k: _check_scalar(k, values[k]) for k in _SCALAR_DEFAULTS}
        config = cls(n_levels=n_levels, **levels, **scalars)
        config._check_levels()
        return config

    def _check_levels(self) -> None:
        """Cross-level and cross-key rules."""
        for i in range(self.n_levels):
            steps, size, splits = (
                self.n_resampling_steps[i],
                self.sample_size[i],
                self.n_splits[i],
            )
            if steps > 1 and size is None:
                raise InvalidArgumentError(
                    f"config key sample_size: level {i + 1} has n_resampling_steps={steps} "
                    "but no sample_size; give the points taken per cluster (an integer >= 1)"
                )
            if steps > 1 and splits > 1:
                raise InvalidArgumentError(
                    f"config keys n_splits and n_resampling_steps: level {i + 1} has "
                    f"n_splits={splits} and n_resampling_steps={steps}; splits and resampling "
                    "cannot be combined at the same level, set one of them to 1"
                )
        for i in range(1, self.n_levels):
            inputs = self.n_clusters[i - 1] * self.n_splits[i - 1]
            if self.n_clusters[i] > inputs:
                raise InvalidArgumentError(
                    f"config key n_clusters={list(self.n_clusters)}: level {i + 1} asks for "
                    f"{self.n_clusters[i]} clusters but has only {inputs} inputs (the "
                    f"centroids of level {i}); use at most {inputs}"
                )
        for i, (gpus, procs) in enumerate(
            zip(self.ngpus_per_node, self.nprocs_per_node, strict=True)
        ):
            if gpus > 0 and procs is not None and procs != gpus:
                raise InvalidArgumentError(
                    f"config keys nprocs_per_node={procs}, ngpus_per_node={gpus} (level "
                    f"{i + 1}): k-means runs one process per GPU; set nprocs_per_node to "
                    f"null (or to {gpus}), or ngpus_per_node to 0 for CPU processes"
                )

    def procs_per_node(self, level: int) -> int:
        """Return the k-means processes per node of ``level`` (1-based).

        ``nprocs_per_node`` of that level, else one per GPU (one on CPU).
        """
        procs = self.nprocs_per_node[level - 1]
        return procs if procs is not None else max(1, self.ngpus_per_node[level - 1])

    def n_processes(self, level: int) -> int:
        """Return the k-means processes of ``level``'s job (``procs_per_node * nnodes``).

        More than one: ``run.sh`` starts ``torchrun`` (one node) and the SLURM job
        ``srun``; the ranks share the rows of every k-means run (``torch.distributed``).
        """
        return self.procs_per_node(level) * self.nnodes[level - 1]

    def check_inputs(self, n_inputs: int, what: str) -> None:
        """Check that level 1 has enough inputs.

        Parameters
        ----------
        n_inputs : int
            Rows to cluster (feature rows, or the subset's size).
        what : str
            What they are, for the message (``"feature rows of run ..."``).

        Raises
        ------
        InvalidArgumentError
            If ``n_clusters`` of level 1 exceeds ``n_inputs``.
        """
        if self.n_clusters[0] > n_inputs:
            raise InvalidArgumentError(
                f"config key n_clusters={list(self.n_clusters)}: level 1 asks for "
                f"{self.n_clusters[0]} clusters but has only {n_inputs} inputs ({what}); "
                f"use at most {n_inputs}"
            )

    def as_dict(self) -> dict[str, Any]:
        """Every key with plain values (lists for per-level keys), in a stable order."""
        out = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    def params(self) -> dict[str, Any]:
        """Return the run's MLflow parameters (the seed is logged as ``seed``)."""
        return self.as_dict()

    def key_params(self) -> dict[str, Any]:
        """Parameters that determine the result (everything but :data:`VOLATILE_KEYS`)."""
        return {k: v for k, v in self.params().items() if k not in VOLATILE_KEYS}

    def to_yaml(self, header: str = "") -> str:
        """Return the config as YAML text, per-level lists on one line, after ``header``."""
        import yaml

        lines = [f"# {line}".rstrip() for line in header.splitlines()]
        for key, value in self.as_dict().items():
            if isinstance(value, list):
                lines.append(f"{key}: {yaml.safe_dump(value, default_flow_style=True).strip()}")
            else:
                lines.append(yaml.safe_dump({key: value}, default_flow_style=False).strip())
        return "\n".join(lines) + "\n"


_LEVEL_DEFAULTS: dict[str, Any] = {
    "n_iters": 50,
    "n_splits": 1,
    "n_resampling_steps": 1,
    "sample_size": None,
    "sampling_strategy": "r",
    "ngpus_per_node": 1,
    "nnodes": 1,
    "nprocs_per_node": None,
}
#: Why ``high_precision: float32`` (the original configs' value) is accepted but not used.
HIGH_PRECISION_NOTE = (
    "centroid sums are accumulated in float64 whatever high_precision says: exact to "
    "rounding for any cluster size, at no measurable cost next to the distance products"
)
_SCALAR_DEFAULTS: dict[str, Any] = {
    f.name: f.default
    for f in fields(ClusteringConfig)
    if f.name not in LEVEL_KEYS and f.name != "n_levels"
}


def valid_keys() -> tuple[str, ...]:
    """Return the valid config keys, sorted."""
    return tuple(sorted({"n_levels", *LEVEL_KEYS, *_SCALAR_DEFAULTS}))


def _unknown_key(key: str) -> InvalidArgumentError:
    close = difflib.get_close_matches(str(key), valid_keys(), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return InvalidArgumentError(
        f"config key {key!r} is not valid{hint}; valid keys: {', '.join(valid_keys())}"
    )


def _n_levels(mapping: Mapping[str, Any]) -> int:
    """``n_levels`` as given, else the length of ``n_clusters`` (1 for a scalar)."""
    clusters = mapping["n_clusters"]
    default = len(clusters) if isinstance(clusters, list | tuple) else 1
    n_levels = mapping.get("n_levels", default)
    if not is_int(n_levels) or n_levels < 1:
        raise InvalidArgumentError(f"config key n_levels={n_levels!r} must be an integer >= 1")
    return n_levels


def _per_level(key: str, value: Any, n_levels: int) -> tuple[Any, ...]:
    """Check a per-level key and return one value per level (a scalar is repeated)."""
    if isinstance(value, list | tuple):
        if len(value) != n_levels:
            raise InvalidArgumentError(
                f"config key {key}={list(value)!r} has {len(value)} entries but "
                f"n_levels={n_levels}; give one value per level (or one value for all levels)"
            )
        items = list(value)
    else:
        items = [value] * n_levels
    return tuple(_check_level_value(key, v, i + 1) for i, v in enumerate(items))


def _check_level_value(key: str, value: Any, level: int) -> Any:
    where = f"config key {key}: level {level} has {value!r}"
    if key == "sampling_strategy":
        if value not in VALID_STRATEGIES:
            raise InvalidArgumentError(
                f"{where}; valid strategies: 'r' (random members), 'c' (closest to centroid)"
            )
        return value
    if key in ("sample_size", "nprocs_per_node") and value is None:
        return None
    minimum = 0 if key in ("n_iters", "ngpus_per_node") else 1
    if not is_int(value) or value < minimum:
        null = "null or " if key == "nprocs_per_node" else ""
        raise InvalidArgumentError(f"{where}; it must be {null}an integer >= {minimum}")
    return value


def _check_scalar(key: str, value: Any) -> Any:
    """Check one non-per-level key."""
    bad = f"config key {key}={value!r}"
    if key in ("checkpoint_period", "seed"):
        if not is_int(value) or value < 0:
            raise InvalidArgumentError(f"{bad} must be an integer >= 0")
    elif key == "ncpus_per_gpu":
        if not is_int(value) or value < 1:
            raise InvalidArgumentError(f"{bad} must be an integer >= 1")
    elif key in ("dtype", "high_precision") and value not in VALID_DTYPES:
        raise InvalidArgumentError(f"{bad} is not valid; valid dtypes: {', '.join(VALID_DTYPES)}")
    elif key == "matmul_precision" and value not in VALID_MATMUL_PRECISIONS:
        raise InvalidArgumentError(
            f"{bad} is not valid; valid values: {', '.join(VALID_MATMUL_PRECISIONS)}"
        )
    elif key == "init" and value not in VALID_INITS:
        raise InvalidArgumentError(f"{bad} is not valid; valid values: {', '.join(VALID_INITS)}")
    elif key == "device":
        _check_device_text(value)
    elif key == "tol" and value is not None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            raise InvalidArgumentError(f"{bad} must be null or a number >= 0")
        value = float(value)
    elif (
        key in ("subset_indices_path", "slurm_partition")
        and value is not None
        and (not isinstance(value, str) or not value)
    ):
        raise InvalidArgumentError(f"{bad} must be null or a non-empty string")
    elif key == "slurm_partition" and value is not None and not SLURM_NAME.fullmatch(value):
        raise InvalidArgumentError(
            f"{bad}: expected a SLURM partition name (letters, digits, _ . + -)"
        )
    return value


def _check_device_text(value: Any) -> None:
    if not isinstance(value, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        raise InvalidArgumentError(
            f"config key device={value!r} is not valid; use auto, cpu, cuda or cuda:N"
        )


def parse_overrides(tokens: Sequence[str]) -> dict[str, Any]:
    """Parse ``key=value`` words from the command line; values are YAML.

    Parameters
    ----------
    tokens : sequence of str
        E.g. ``["n_iters=5", "n_clusters=[64,8]"]``.

    Returns
    -------
    dict
        ``{"n_iters": 5, "n_clusters": [64, 8]}`` (later words win).
    """
    import yaml

    overrides: dict[str, Any] = {}
    for token in tokens:
        key, sep, text = token.partition("=")
        key = key.strip()
        if not sep or not key or key.startswith("-"):
            raise InvalidArgumentError(
                f"unexpected argument {token!r}; config overrides look like key=value "
                "(e.g. n_iters=5 or n_clusters=[64,8])"
            )
        try:
            overrides[key] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            first = str(exc).splitlines()[0]
            raise InvalidArgumentError(f"override {token!r}: not a YAML value ({first})") from exc
    return overrides


def load_config(path: Path | str, overrides: Mapping[str, Any] | None = None) -> ClusteringConfig:
    """Read a YAML config, apply overrides and validate it.

    Parameters
    ----------
    path : Path or str
        The YAML file. A bare name that is not a file is looked up in the shipped
        ``configs/clusters/`` directory.
    overrides : mapping, optional
        Keys replacing the file's (see :func:`parse_overrides`).

    Returns
    -------
    ClusteringConfig
    """
    import yaml

    path = _find_config(Path(path))
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        first = " ".join(str(exc).split())
        raise InvalidArgumentError(f"--config_file {path}: not valid YAML ({first})") from exc
    if not isinstance(data, dict):
        raise InvalidArgumentError(
            f"--config_file {path}: expected a mapping of config keys, got {type(data).__name__}"
        )
    return ClusteringConfig.from_mapping({**data, **(overrides or {})})


def shipped_configs_dir() -> Path:
    """Return ``configs/clusters`` of the source checkout (may not exist when installed)."""
    return Path(__file__).resolve().parents[4] / "configs" / "clusters"  # src/astrocurate/stages/..


def _find_config(path: Path) -> Path:
    if path.is_file():
        return path
    shipped = shipped_configs_dir() / path.name
    if path.parent == Path() and shipped.is_file():
        return shipped
    raise InvalidArgumentError(f"--config_file {path}: no such file")
