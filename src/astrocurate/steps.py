"""The pipeline's steps: their MLflow run names and their order.

Each step is a package under :mod:`astrocurate.stages` named after its run; a step's
runs take the runs of the step before as inputs (docs/design.md section 2). Optional
steps (:data:`OPTIONAL_STEPS`) read the survey itself, not another run, and stand outside
that chain.
"""

from __future__ import annotations

CUTTING_OUT = "cutting_out"
MERGE_CUTOUTS = "merge_cutouts"
FEATURE_EXTRACTION = "feature_extraction"
CLUSTERING = "clustering"
CURATED_SAMPLING = "curated_sampling"
EVALUATION = "evaluation"
SOURCE_FINDING = "source_finding"

#: Run names of the steps, in pipeline order (the guide's names).
ORDER: tuple[str, ...] = (
    CUTTING_OUT,
    MERGE_CUTOUTS,
    FEATURE_EXTRACTION,
    CLUSTERING,
    CURATED_SAMPLING,
    EVALUATION,
)

#: Run names of the optional steps, outside :data:`ORDER`: each reads the mosaics directly.
OPTIONAL_STEPS: tuple[str, ...] = (SOURCE_FINDING,)

#: Every run name a step records: the chain, then the optional steps.
ALL_STEPS: tuple[str, ...] = ORDER + OPTIONAL_STEPS


def source_of(step: str) -> str | None:
    """Return the run name of the step whose runs ``step`` reads (``None`` for the first)."""
    position = ORDER.index(step)
    return ORDER[position - 1] if position else None
