"""The pipeline's steps: their MLflow run names and their order.

Each step is a package under :mod:`astrocurate.stages` named after its run; a step's
runs take the runs of the step before as inputs (docs/design.md section 2).
"""

from __future__ import annotations

CUTTING_OUT = "cutting_out"
MERGE_CUTOUTS = "merge_cutouts"
FEATURE_EXTRACTION = "feature_extraction"
CLUSTERING = "clustering"
CURATED_SAMPLING = "curated_sampling"
EVALUATION = "evaluation"

#: Run names of the steps, in pipeline order (the guide's names).
ORDER: tuple[str, ...] = (
    CUTTING_OUT,
    MERGE_CUTOUTS,
    FEATURE_EXTRACTION,
    CLUSTERING,
    CURATED_SAMPLING,
    EVALUATION,
)


def source_of(step: str) -> str | None:
    """Return the run name of the step whose runs ``step`` reads (``None`` for the first)."""
    position = ORDER.index(step)
    return ORDER[position - 1] if position else None
