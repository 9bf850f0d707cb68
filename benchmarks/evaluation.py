"""Does curation pay? Curated vs random pretraining on a synthetic survey with truth.

Runs the real pipeline in a work directory with its own MLflow store: a synthetic survey
(``--mosaics`` mosaics of ``--mosaic-size`` px, with its truth catalogue), cutouts of
``--window-size`` px, the merge, the default features, the clustering ``--config``, a
curated sample of ``--num-samples`` with its random baseline of the same size, then step 6
(``evaluate``) with ``--seeds`` seeds and a budget of ``--images-seen`` images per arm and
seed. It prints, side by side from this one run, per arm: the balanced accuracy of the kNN
and the linear probe and the recall of the rarest class (mean and spread over seeds), the
pretraining time per arm and seed and its images/s, and the verdict (curated ahead when
both differences exceed the sum of the spreads). The figures also go to
``<workdir>/evaluation_benchmark.json``.

Usage::

    python benchmarks/evaluation.py                         # 8 x 2048 px, 3000 cutouts, 3 seeds
    python benchmarks/evaluation.py --images-seen 30000 --device cuda
    python benchmarks/evaluation.py --mosaics 2 --mosaic-size 1024 --num-samples 300 \\
        --images-seen 600 --seeds 2                         # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary one")
    parser.add_argument("--mosaics", type=int, default=8)
    parser.add_argument("--mosaic-size", type=int, default=2048)
    parser.add_argument("--window-size", type=int, default=64)
    parser.add_argument("--config", default="demo_3lvl_100_20_5.yaml", help="clustering config")
    parser.add_argument("--num-samples", type=int, default=3000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--images-seen", type=int, default=9000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--method", choices=["simclr", "byol"], default="simclr")
    parser.add_argument("--max-per-category", type=int, default=200)
    parser.add_argument("--arms", nargs="+", default=["curated", "random"])
    parser.add_argument("--device", default="auto")
    return parser.parse_args()


def _pipeline(args: argparse.Namespace, work: Path) -> tuple[str, dict[str, float]]:
    """Run steps 1 to 5; return the sampling run ID and the seconds of each step."""
    from astrocurate.stages.clustering.run import load_config, prepare_clustering, run_clustering
    from astrocurate.stages.curated_sampling.run import SamplingOptions, curated_sample
    from astrocurate.stages.cutting_out.run import CutoutOptions, make_cutouts
    from astrocurate.stages.feature_extraction.run import extract_features
    from astrocurate.stages.merge_cutouts.run import merge_cutouts
    from astrocurate.synthetic.survey import make_survey

    seconds: dict[str, float] = {}
    started = time.perf_counter()
    survey = make_survey(
        work / "survey", n_mosaics=args.mosaics, mosaic_size=args.mosaic_size, seed=0
    )
    cutouts = make_cutouts(survey.output_dir, work / "outputs", CutoutOptions(args.window_size))
    merged = merge_cutouts([cutouts.run_id])
    seconds["survey, cutouts, merge"] = time.perf_counter() - started
    started = time.perf_counter()
    features = extract_features(merged.run_id, device=args.device)
    seconds["features"] = time.perf_counter() - started
    started = time.perf_counter()
    prepared = prepare_clustering(features.run_id, load_config(args.config))
    run_clustering(prepared.directory)
    sample = curated_sample(prepared.run_id, SamplingOptions(args.num_samples), report=False)
    seconds["clustering, sampling"] = time.perf_counter() - started
    return sample.run_id, seconds


def _table(metrics: dict[str, float], info: dict, timings: dict[str, list[dict]]) -> str:
    rarest = info["labels"]["rarest"]
    lines = [
        f"labelled cutouts: {info['labels']['cutouts']} {info['labels']['categories']}; "
        f"rarest class: {rarest}",
        f"{'arm':<10} {'kNN bal. acc.':>15} {'linear bal. acc.':>17} "
        f"{'kNN recall ' + rarest:>20} {'linear recall ' + rarest:>23} {'s/seed':>8} {'img/s':>7}",
    ]
    for arm in info["arms"]:
        cells = []
        for key in (
            "knn_balanced_accuracy",
            "linear_balanced_accuracy",
            "knn_rarest_recall",
            "linear_rarest_recall",
        ):
            mean, std = metrics.get(f"{arm}_{key}_mean"), metrics.get(f"{arm}_{key}_std")
            cells.append("-" if mean is None else f"{mean:.3f} +- {std:.3f}")
        runs = timings.get(arm, [])
        per_seed = sum(t["seconds"] for t in runs) / len(runs) if runs else float("nan")
        rate = sum(t["images_per_second"] for t in runs) / len(runs) if runs else float("nan")
        lines.append(
            f"{arm:<10} {cells[0]:>15} {cells[1]:>17} {cells[2]:>20} {cells[3]:>23} "
            f"{per_seed:>8.0f} {rate:>7.0f}"
        )
    for probe in ("knn", "linear"):
        if f"curated_ahead_{probe}" in metrics:
            verdict = "AHEAD" if metrics[f"curated_ahead_{probe}"] else "not clearly ahead"
            lines.append(
                f"{probe}: curated - random = "
                f"{metrics[f'curated_minus_random_{probe}_balanced_accuracy']:+.3f} balanced "
                f"accuracy, {metrics[f'curated_minus_random_{probe}_rarest_recall']:+.3f} "
                f"rarest recall: {verdict}"
            )
    return "\n".join(lines)


def main() -> None:
    """Run the benchmark and print its table."""
    args = _arguments()
    work = (args.workdir or Path(tempfile.mkdtemp(prefix="astrocurate-eval-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    os.environ.setdefault("ASTROCURATE_DATA_DIR", str(work / "outputs"))
    os.chdir(work)
    import torch

    from astrocurate.stages.evaluation.outputs import INFO, METRICS
    from astrocurate.stages.evaluation.run import EvaluationOptions, evaluate

    sampling_id, seconds = _pipeline(args, work)
    options = EvaluationOptions(
        arms=tuple(args.arms),
        seeds=args.seeds,
        method=args.method,
        images_seen=args.images_seen,
        batch_size=args.batch_size,
        max_per_category=args.max_per_category,
        device=args.device,
    )
    started = time.perf_counter()
    run = evaluate(sampling_id, options)
    seconds["evaluation"] = time.perf_counter() - started
    metrics = json.loads((run.output_dir / METRICS).read_text())
    info = json.loads((run.output_dir / INFO).read_text())
    timings = {
        arm: [
            json.loads(p.read_text())
            for p in sorted(run.output_dir.glob(f"arms/{arm}/*/timing.json"))
        ]
        for arm in info["arms"]
    }
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU x{os.cpu_count()}"
    print(f"astrocurate evaluation benchmark on {device}, {time.strftime('%Y-%m-%d')}")
    print(
        f"survey {args.mosaics} x {args.mosaic_size} px, windows {args.window_size} px, sample "
        f"{args.num_samples}, {args.method} ResNet-18, {args.images_seen} images seen per arm "
        f"and seed, {args.seeds} seeds"
    )
    print(", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
    print(_table(metrics, info, timings))
    print(f"evaluation run {run.run_id}: {run.output_dir}")
    result = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "device": device,
        "seconds": seconds,
        "metrics": metrics,
        "timings": timings,
        "info": info,
    }
    (work / "evaluation_benchmark.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
