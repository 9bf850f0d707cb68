"""Shared fixtures: an isolated MLflow store and working directory per test."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tracking_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One real sqlite MLflow store for the session (creating one takes seconds)."""
    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    return f"sqlite:///{path}"


@pytest.fixture
def store(tracking_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point every step at the session store, in a fresh experiment and working directory.

    Returns the working directory; outputs go to ``<workdir>/outputs``.
    """
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_db)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", f"test-{uuid.uuid4().hex[:12]}")
    monkeypatch.setenv("ASTROCURATE_DATA_DIR", str(tmp_path / "outputs"))
    monkeypatch.chdir(tmp_path)
    return tmp_path
