"""What the pipeline knows of a tracked run (:class:`RunRecord`), and run ID checks."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from astrocurate.errors import RunNotFoundError
from astrocurate.tracking.store import FINISHED, TAG_INPUTS, TAG_OUTPUT_DIR, TAG_STEP

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class RunRecord:
    """What the pipeline needs to know about one tracked run.

    Attributes
    ----------
    run_id, name, status : str
        MLflow run ID, run name (the step) and status (``FINISHED``, ``RUNNING``, ...).
    start_time : int
        Start time in milliseconds since the epoch.
    params, tags : dict of str to str
        The run's parameters and tags as MLflow stores them.
    """

    run_id: str
    name: str
    status: str
    start_time: int
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_mlflow(cls, run: Any) -> RunRecord:
        """Build a record from an ``mlflow.entities.Run``."""
        return cls(
            run_id=run.info.run_id,
            name=run.info.run_name or run.data.tags.get("mlflow.runName", ""),
            status=run.info.status,
            start_time=int(run.info.start_time or 0),
            params=dict(run.data.params),
            tags=dict(run.data.tags),
        )

    @property
    def step(self) -> str:
        """Return the pipeline step that produced the run."""
        return self.tags.get(TAG_STEP, self.name)

    @property
    def output_dir(self) -> Path | None:
        """Return the run's output directory, if it recorded one."""
        value = self.tags.get(TAG_OUTPUT_DIR)
        return Path(value) if value else None

    @property
    def input_run_ids(self) -> list[str]:
        """Return the IDs of the runs this run read from."""
        return json.loads(self.tags.get(TAG_INPUTS, "[]"))

    @property
    def finished(self) -> bool:
        """Return whether the run completed successfully."""
        return self.status == FINISHED


def parse_run_id(value: str, argument: str = "run ID") -> str:
    """Check that ``value`` is an MLflow run ID and return it normalised.

    Parameters
    ----------
    value : str
        Text given by the user.
    argument : str
        Name of the command-line argument, for the message.

    Raises
    ------
    RunNotFoundError
        If the text is not 32 hexadecimal characters. A placeholder such as the
        guide's ``CUTOUTS_RUN_ID_64`` gets a hint to write ``$CUTOUTS_RUN_ID_64``.
    """
    text = str(value).strip()
    if _RUN_ID.match(text.lower()):
        return text.lower()
    if not text:
        raise RunNotFoundError(
            f"{argument}: got an empty run ID (did the command that should have produced it fail?)"
        )
    hint = ""
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", text):
        hint = f'; if {text} is a shell variable, write ${text} (or "${text}")'
    raise RunNotFoundError(
        f"{argument}: {text!r} is not an MLflow run ID (expected 32 hexadecimal characters){hint}"
    )


def params_match(stored: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    """Return whether every wanted parameter equals the stored one (as text or number)."""
    for key, value in wanted.items():
        if key not in stored:
            return False
        if stored[key] == str(value):
            continue
        try:
            if float(stored[key]) != float(value):
                return False
        except ValueError:
            return False
    return True
