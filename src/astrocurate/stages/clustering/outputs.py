"""What the clustering step leaves for the next ones: file names and light readers.

The sampling step and the report read a finished experiment directory through this
module only (the layer contract in ``make lint``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from astrocurate.errors import InvalidRunError
from astrocurate.stages.clustering.config import CONFIG_FILE, STEP, ClusteringConfig, load_config
from astrocurate.tracking import TAG_ERROR, RunRecord, get_run, require_run
from astrocurate.tracking.prepared import PREPARED

#: The run's description: its ID, its features run and the parameters that define it.
RUN_FILE = "run.json"
INPUT_INDICES = "input_indices.npy"
LEVEL_DONE = "level.json"
LEVEL_ARRAYS = ("centroids", "labels", "members", "offsets", "distances", "point_labels")


@dataclass
class ClusteringOutputs:
    """The arrays of a finished clustering directory, memory-mapped (for sampling).

    Attributes
    ----------
    directory : Path
        The experiment directory.
    config : ClusteringConfig
        Its config.
    input_indices : numpy.ndarray of int64, shape (n,)
        Feature row of each level-1 input.
    levels : list of dict of str to numpy.ndarray
        Per level (index 0 is level 1): ``centroids``, ``labels``, ``members``,
        ``offsets``, ``distances``, ``point_labels``.
    """

    directory: Path
    config: ClusteringConfig
    input_indices: np.ndarray
    levels: list[dict[str, np.ndarray]] = field(default_factory=list)


def load_clustering(directory: Path | str) -> ClusteringOutputs:
    """Memory-map the outputs of a clustering directory (every level must be complete)."""
    directory = Path(directory)
    config = load_config(directory / CONFIG_FILE)
    levels = []
    for lvl in range(1, config.n_levels + 1):
        out = directory / f"level_{lvl}"
        if not (out / LEVEL_DONE).is_file():
            raise InvalidRunError(f"{out}: level {lvl} is not complete; run run.sh first")
        levels.append(
            {n: np.load(out / f"{n}.npy", mmap_mode="r", allow_pickle=False) for n in LEVEL_ARRAYS}
        )
    indices = np.load(directory / INPUT_INDICES, mmap_mode="r", allow_pickle=False)
    return ClusteringOutputs(directory, config, indices, levels)


def read_run_file(directory: Path) -> dict[str, Any]:
    """Return the run.json of a clustering experiment directory."""
    path = directory / RUN_FILE
    if not path.is_file():
        raise InvalidRunError(
            f"{directory} is not a clustering experiment directory (no {RUN_FILE}); "
            "prepare one with scripts/4_clustering.py"
        )
    return json.loads(path.read_text())


def require_clustering_run(run_id: str, argument: str = "--clustering-id") -> RunRecord:
    """Return a finished clustering run; explain how to finish a prepared or failed one.

    Parameters
    ----------
    run_id : str
        The run ID given by the user.
    argument : str
        The command-line argument, named in messages.

    Raises
    ------
    RunNotFoundError, InvalidRunError
        As :func:`astrocurate.tracking.require_run`, with run.sh named for unfinished runs.
    """
    record = get_run(run_id, argument)
    if record.step == STEP and not record.finished:
        raise InvalidRunError(unfinished_message(record, argument))
    return require_run(run_id, STEP, argument)


def unfinished_message(record: RunRecord, argument: str) -> str:
    """Say what state an unfinished clustering run is in and how to finish it."""
    where = record.output_dir
    run = f'cd "{where}" && ./run.sh'
    if record.status == PREPARED:
        state = "is prepared (step 4a) but has not been run"
        todo = f"run it: {run}"
    elif record.status == "RUNNING":
        state = "is still running (or its process was killed)"
        todo = f"wait for it; if it was killed, run it again to resume: {run}"
    else:
        state = f"is {record.status}" + (
            f" ({record.tags[TAG_ERROR]})" if record.tags.get(TAG_ERROR) else ""
        )
        todo = f"see {where}/logs, then run it again to resume: {run}"
    return f"{argument}: clustering run {record.run_id} {state}; {todo}"
