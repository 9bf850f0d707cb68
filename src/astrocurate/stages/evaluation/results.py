"""The results of an evaluation: the scores table, the metrics, the report.

:func:`prepare_outputs` writes what every shard writes alike (the labelled cutouts, the
run's description); :func:`complete` gathers the scores of every (seed, arm) into
``scores.parquet`` and ``metrics.json`` (mean and spread over seeds, curated against
random), logs them and writes the report.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd

from astrocurate.io.atomic import write_json
from astrocurate.io.cutout_store import write_parquet_atomic
from astrocurate.stages.evaluation.arms import seed_directory
from astrocurate.stages.evaluation.outputs import (
    INFO,
    LABELS,
    METRICS,
    REPORT_DIR,
    SCORES,
    SEED_SCORES,
)
from astrocurate.stages.evaluation.plan import PROBES, Plan
from astrocurate.tracking import StepRun

log = logging.getLogger(__name__)


def prepare_outputs(out: Path, plan: Plan) -> None:
    """Write the labelled cutouts and the run's description (the same bytes every time)."""
    write_parquet_atomic(plan.labelled.table, out / LABELS)
    write_json(out / INFO, _info(plan))


def complete(run: StepRun, plan: Plan, report: bool) -> None:
    """Gather every (seed, arm)'s scores into the scores table and metrics; log; report."""
    out = run.output_dir
    records = []
    for seed, arm in plan.jobs():
        scores = json.loads((seed_directory(out, arm.name, seed) / SEED_SCORES).read_text())
        records += [
            {"arm": arm.name, "seed": seed, "metric": k, "value": v} for k, v in scores.items()
        ]
    scores = pd.DataFrame.from_records(records, columns=["arm", "seed", "metric", "value"])
    write_parquet_atomic(scores, out / SCORES)
    metrics = summarise(scores, plan.labelled.rarest)
    write_json(out / METRICS, metrics)
    run.log_metrics(metrics)
    run.log_artifact(out / METRICS)
    if report:
        write_report_artifacts(run)


def summarise(scores: pd.DataFrame, rarest: str) -> dict[str, float]:
    """Mean and spread over seeds of every arm's metrics, and curated against random.

    Parameters
    ----------
    scores : DataFrame
        Columns ``arm``, ``seed``, ``metric``, ``value``.
    rarest : str
        The rarest category among the labelled cutouts.

    Returns
    -------
    dict of str to float
        ``<arm>_<metric>_mean`` and ``<arm>_<metric>_std`` (sample standard deviation over
        seeds; 0 with one seed), ``<arm>_<probe>_rarest_recall_{mean,std}``, and with both
        the curated and the random arm ``curated_minus_random_<probe>_balanced_accuracy``,
        ``curated_minus_random_<probe>_rarest_recall`` and ``curated_ahead_<probe>`` (1 when
        the curated mean minus its spread is above the random mean plus its spread, on both
        the balanced accuracy and the rarest category's recall).
    """
    grouped = scores.groupby(["arm", "metric"], sort=True)["value"]
    mean, std = grouped.mean(), grouped.std(ddof=1).fillna(0.0)
    metrics: dict[str, float] = {}
    for (arm, metric), value in mean.items():
        metrics[f"{arm}_{metric}_mean"] = float(value)
        metrics[f"{arm}_{metric}_std"] = float(std[(arm, metric)])
        for probe in PROBES:
            if metric == f"{probe}_recall_{rarest}":
                metrics[f"{arm}_{probe}_rarest_recall_mean"] = float(value)
                metrics[f"{arm}_{probe}_rarest_recall_std"] = float(std[(arm, metric)])
    arms = set(scores["arm"])
    if {"curated", "random"} <= arms:
        for probe in PROBES:
            ahead = True
            for name in (f"{probe}_balanced_accuracy", f"{probe}_rarest_recall"):
                cur, ran = (metrics.get(f"{a}_{name}_mean") for a in ("curated", "random"))
                if cur is None or ran is None:
                    continue
                metrics[f"curated_minus_random_{name}"] = cur - ran
                spread = metrics[f"curated_{name}_std"] + metrics[f"random_{name}_std"]
                ahead = ahead and cur - ran > spread
            metrics[f"curated_ahead_{probe}"] = float(ahead)
    return metrics


def _info(plan: Plan) -> dict[str, Any]:
    labelled = plan.labelled
    return {
        "sampling_run_id": plan.sampling.run_id,
        "sampling_dir": str(plan.sampling.directory),
        "merged_dir": str(plan.sampling.merged_dir),
        "options": plan.options.params(),
        "pretraining": {
            k: v for k, v in asdict(plan.options.pretrain_config(0)).items() if k != "seed"
        },
        "arms": {
            arm.name: {
                "cutouts": None if arm.rows is None else len(arm.rows),
                "weights": None if arm.weights is None else str(arm.weights),
            }
            for arm in plan.arms
        },
        "labels": {
            "source": labelled.source,
            "cutouts": len(labelled.table),
            "unmatched": labelled.unmatched,
            "categories": {
                name: int(labelled.labels[:, i].sum()) for i, name in enumerate(labelled.categories)
            },
            "rarest": labelled.rarest,
        },
    }


def write_report_artifacts(run: StepRun) -> Path:
    """Write the report into the run directory and log its files as artifacts."""
    from astrocurate.stages.evaluation.report import write_report

    page = write_report(run.output_dir)
    run.log_folder(page.parent, REPORT_DIR)
    log.info("evaluation report: %s", page)
    return page
