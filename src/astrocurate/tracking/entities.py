"""Light stand-ins for the MLflow entities the tracking layer builds and reads.

A step that writes its run directly to a local sqlite store (:mod:`astrocurate.tracking.
direct_client`) must not import :mod:`mlflow.entities` (importing any ``mlflow`` module
costs seconds). These frozen dataclasses carry the same attribute names as MLflow's
``Metric``, ``Param``, ``RunTag``, ``Run``, ``RunInfo``, ``RunData`` and ``Experiment``,
as far as astrocurate and its tests use them; :func:`to_mlflow` turns a batch into
MLflow's own types for a client that goes through MLflow.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Metric:
    """One metric value at a step (MLflow's ``Metric``, without models or datasets)."""

    key: str
    value: float
    timestamp: int
    step: int = 0
    dataset_name: str | None = None
    dataset_digest: str | None = None
    model_id: str | None = None
    run_id: str | None = None


@dataclass(frozen=True)
class Param:
    """One parameter (MLflow's ``Param``)."""

    key: str
    value: str


@dataclass(frozen=True)
class RunTag:
    """One run tag (MLflow's ``RunTag``)."""

    key: str
    value: str


@dataclass(frozen=True)
class Experiment:
    """The fields of MLflow's ``Experiment`` that the tracking layer reads."""

    experiment_id: str
    name: str
    artifact_location: str
    lifecycle_stage: str


@dataclass(frozen=True)
class RunInfo:
    """The fields of MLflow's ``RunInfo``."""

    run_id: str
    experiment_id: str
    run_name: str
    user_id: str
    status: str
    start_time: int | None
    end_time: int | None
    artifact_uri: str
    lifecycle_stage: str

    @property
    def run_uuid(self) -> str:
        """Return the run ID (MLflow's older name for it)."""
        return self.run_id


@dataclass(frozen=True)
class RunData:
    """A run's latest metric values, parameters and tags (MLflow's ``RunData``)."""

    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Run:
    """A run: its info and data (MLflow's ``Run``)."""

    info: RunInfo
    data: RunData


class ParamChangeError(ValueError):
    """A parameter already logged with another value (MLflow refuses such a change)."""


def is_store_error(exc: BaseException) -> bool:
    """Return whether ``exc`` is a refusal of the tracking store (MLflow's or the direct one).

    ``MlflowException`` is recognised without importing MLflow: if MLflow raised it,
    it is loaded already.
    """
    if isinstance(exc, ParamChangeError):
        return True
    module = sys.modules.get("mlflow.exceptions")
    return module is not None and isinstance(exc, module.MlflowException)


def to_mlflow(
    metrics: Sequence[Any] = (), params: Sequence[Any] = (), tags: Sequence[Any] = ()
) -> tuple[list[Any], list[Any], list[Any]]:
    """Return a batch as MLflow's own entity types (imports MLflow).

    Parameters
    ----------
    metrics, params, tags : sequence
        Objects with the attributes of :class:`Metric`, :class:`Param`, :class:`RunTag`
        (these classes or MLflow's).

    Returns
    -------
    tuple of list
        ``mlflow.entities`` ``Metric``, ``Param`` and ``RunTag`` lists.
    """
    from mlflow import entities

    return (
        [entities.Metric(m.key, m.value, m.timestamp, m.step) for m in metrics],
        [entities.Param(p.key, p.value) for p in params],
        [entities.RunTag(t.key, t.value) for t in tags],
    )
