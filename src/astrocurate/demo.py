"""The demo: the six pipeline steps on a small synthetic survey.

It calls the same functions as the guide's scripts, so its runs are ordinary
runs: ``find_run.py`` finds them and ``mlflow ui`` shows them.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from astrocurate.stages.curated_sampling.outputs import METRICS
from astrocurate.stages.curated_sampling.run import SamplingOptions, curated_sample
from astrocurate.stages.cutting_out.run import CutoutOptions, make_cutouts
from astrocurate.stages.evaluation.run import EvaluationOptions, evaluate
from astrocurate.stages.feature_extraction.run import extract_features
from astrocurate.stages.merge_cutouts.run import merge_cutouts
from astrocurate.tracking import StepRun, redact_uri, tracking_uri

log = logging.getLogger(__name__)

#: Demo survey: 4 overlapping LoTSS-like mosaics of 1024 px (a few MB, seconds to make).
DEMO_SURVEY = {"n_mosaics": 4, "mosaic_size": 1024}
DEMO_WINDOW_SIZES = (64, 128)
DEMO_CLUSTERING_CONFIG = "demo_2lvl_64_8.yaml"
#: Size of the demo's curated sample (about a tenth of the demo survey's cutouts).
DEMO_NUM_SAMPLES = 250
#: The demo's evaluation: a small pretraining budget (about a minute on two cores).
DEMO_EVALUATION = EvaluationOptions(
    seeds=2, images_seen=512, batch_size=64, max_per_category=60, folds=3
)


def demo_survey(directory: Path, seed: int = 0) -> Path:
    """Return the demo survey in ``directory``, generating it unless already there."""
    from astrocurate.synthetic.survey import existing_or_new_survey

    return existing_or_new_survey(directory, seed=seed, **DEMO_SURVEY)


def run_demo(workdir: Path, mosaics: Path | None = None, seed: int = 0) -> dict[str, StepRun]:
    """Run the pipeline's steps on the demo survey (or on ``mosaics``) and print a summary.

    Parameters
    ----------
    workdir : Path
        Directory for the survey and the step outputs.
    mosaics : Path, optional
        A directory of the user's own mosaics instead of the synthetic survey.
    seed : int
        Seed of the synthetic survey.

    Returns
    -------
    dict of str to StepRun
        The runs by label (``cutouts_64``, ``cutouts_128``, ``merge``, ``features``,
        ``clustering``, ``sampling``, ``evaluation``).
    """
    started = time.time()
    workdir = Path(workdir).resolve()
    survey = Path(mosaics).resolve() if mosaics else demo_survey(workdir / "survey", seed)
    outputs = workdir / "outputs"
    runs: dict[str, StepRun] = {}
    for size in DEMO_WINDOW_SIZES:
        runs[f"cutouts_{size}"] = make_cutouts(survey, outputs, CutoutOptions(window_size=size))
    runs["merge"] = merge_cutouts([runs[f"cutouts_{s}"].run_id for s in DEMO_WINDOW_SIZES])
    runs["features"] = extract_features(runs["merge"].run_id)
    runs["clustering"] = _cluster(runs["features"].run_id)
    runs["sampling"] = curated_sample(
        runs["clustering"].run_id, SamplingOptions(DEMO_NUM_SAMPLES, export=("npy", "png"))
    )
    if mosaics is None:  # the user's own mosaics have no labels to score encoders on
        runs["evaluation"] = evaluate(runs["sampling"].run_id, DEMO_EVALUATION)
    _print_summary(runs, survey, time.time() - started)
    return runs


def _cluster(features_id: str) -> StepRun:
    """Run steps 4a and 4b with the small demo configuration, as ``run.sh`` would."""
    from astrocurate.stages.clustering.run import load_config, prepare_clustering, run_clustering

    prepared = prepare_clustering(features_id, load_config(DEMO_CLUSTERING_CONFIG))
    run_clustering(prepared.directory)
    return StepRun(prepared.run_id, "clustering", prepared.directory, reused=prepared.reused)


def _describe(run: StepRun) -> str:
    """Say what a run holds in a few words."""
    from astrocurate.io.cutout_store import read_manifest
    from astrocurate.stages.feature_extraction.outputs import load_features

    if run.step == "feature_extraction":
        rows, dim = load_features(run.output_dir).shape
        score = _metric(run.run_id, "knn_balanced_accuracy")
        quality = f", kNN balanced accuracy on the truth classes {score:.2f}" if score else ""
        return f"{rows} x {dim} features{quality}"
    if run.step == "curated_sampling":
        return f"{len(np.load(run.output_dir / 'selected.npy'))} cutouts selected"
    if run.step == "evaluation":
        return _describe_evaluation(run)
    if run.step == "clustering":
        sizes = sorted(run.output_dir.glob("level_*/centroids.npy"))
        return "clusters per level: " + "/".join(str(len(np.load(p))) for p in sizes)
    return f"{len(read_manifest(run.output_dir, ['cutout_id']))} cutouts"


def _describe_evaluation(run: StepRun) -> str:
    """Curated against random on the kNN probe, in a few words."""
    from astrocurate.stages.evaluation.outputs import METRICS as EVALUATION_METRICS

    metrics = json.loads((run.output_dir / EVALUATION_METRICS).read_text())
    scores = [
        f"{arm} {metrics[f'{arm}_knn_balanced_accuracy_mean']:.2f}"
        f"+-{metrics[f'{arm}_knn_balanced_accuracy_std']:.2f}"
        for arm in ("curated", "random")
        if f"{arm}_knn_balanced_accuracy_mean" in metrics
    ]
    return "kNN balanced accuracy " + " vs ".join(scores)


def _metric(run_id: str, name: str) -> float | None:
    from astrocurate.tracking import client

    return client().get_run(run_id).data.metrics.get(name)


def _print_summary(runs: dict[str, StepRun], survey: Path, seconds: float) -> None:
    print(f"\nastrocurate demo finished in {seconds:.0f} s on the survey in {survey}\n")
    for label, run in runs.items():
        state = "reused" if run.reused else "new"
        print(f"  {label:<12} {run.step:<19} {run.run_id} ({state}, {_describe(run)})")
        print(f"  {'':<12} {run.output_dir}")
    if "sampling" in runs:
        _print_curation(runs["sampling"])
    if "evaluation" in runs:
        report = runs["evaluation"].output_dir / "report" / "index.html"
        print(f"Evaluation report (curated vs random pretraining): {report}")
    print(
        f"\nTracking store: {redact_uri(tracking_uri())}\n"
        "Inspect the runs:   mlflow ui        (from this directory, then open http://127.0.0.1:5000)\n"
        "Find a run by name: python scripts/find_run.py --run-name merge_cutouts\n"
    )


def _print_curation(run: StepRun) -> None:
    """Say what curation did to the truth classes, and where the report is."""
    metrics = json.loads((run.output_dir / METRICS).read_text())
    names = [k[len("class_share_") : -len("_pool")] for k in metrics if k.endswith("_pool")]
    names = [n for n in names if f"class_share_{n}_pool" in metrics]
    shares = sorted((metrics[f"class_share_{name}_pool"], name) for name in names)
    if shares:
        print("\nClass shares (pool / random sample / curated sample), rarest first:")
        for _, name in shares:
            pool, rand, cur = (
                metrics[f"class_share_{name}_{k}"] for k in ("pool", "random", "curated")
            )
            print(f"  {name:<9} {100 * pool:5.1f} % / {100 * rand:5.1f} % / {100 * cur:5.1f} %")
        entropy = [metrics[f"class_entropy_{k}"] for k in ("pool", "random", "curated")]
        print("  normalised class entropy: {:.2f} / {:.2f} / {:.2f}".format(*entropy))
    report = run.output_dir / "report" / "index.html"
    if report.is_file():
        print(f"\nCuration report: {report}")
