"""Quality curation at sampling: duplicates, outliers, noise, catalogue steering, side by side.

Runs steps 1 to 4 on a synthetic survey with truth whose noise rises towards each mosaic's
edge (``--noise-edge-factor``), with PyBDSF's rms maps and source lists for the cutouts
(``astrocurate find-sources``; reused when the work directory already holds them), then
draws, side by side in this one run, samples of ``--num-samples`` from the same
clustering: plain (no option), with ``--dedup-threshold``, ``--outliers exclude``,
``--min-peak-snr`` (against the rms map), ``--max-noise-ratio``, ``--steer-by`` each
catalogue column of ``--steer``, and everything at once. It prints per sample: the
near-duplicate pairs left at the threshold, the class shares (pool / random / curated;
``empty``: no catalogued source in the window), the shares of noisy cutouts, and for the
isolation forest the class shares among the 100 most anomalous cutouts against the pool's.

Usage::

    python benchmarks/quality.py --workdir /tmp/quality-bench
    python benchmarks/quality.py --mosaics 8 --mosaic-size 2048 --threshold 0.95
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
    parser.add_argument("--mosaics", type=int, default=4)
    parser.add_argument("--mosaic-size", type=int, default=2048)
    parser.add_argument("--window-size", type=int, default=64)
    parser.add_argument("--config", default="demo_3lvl_100_20_5.yaml")
    parser.add_argument("--num-samples", type=int, default=2000)
    parser.add_argument("--threshold", type=float, default=0.98, help="--dedup-threshold")
    parser.add_argument("--outlier-share", type=float, default=0.01)
    parser.add_argument("--min-peak-snr", type=float, default=5.0)
    parser.add_argument("--max-noise-ratio", type=float, default=1.5)
    parser.add_argument("--noise-edge-factor", type=float, default=3.0, help="of the survey")
    parser.add_argument(
        "--steer", nargs="*", default=["max_size_arcsec", "s_code"], help="--steer-by columns"
    )
    parser.add_argument(
        "--no-find-sources",
        dest="find_sources",
        action="store_false",
        help="no PyBDSF run: the survey's own rms maps, no catalogue (and no steering)",
    )
    parser.add_argument("--device", default="auto", help="of the feature step")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return parser.parse_args()


def main() -> None:
    """Draw the three samples and print their figures side by side."""
    args = _arguments()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    work = (args.workdir or Path(tempfile.mkdtemp(prefix="astrocurate-quality-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    os.environ.setdefault("ASTROCURATE_DATA_DIR", str(work / "outputs"))
    os.chdir(work)
    from evaluation import survey_clustering  # benchmarks/evaluation.py, beside this one

    from astrocurate.stages.curated_sampling.outputs import METRICS
    from astrocurate.stages.curated_sampling.run import SamplingOptions, curated_sample

    clustering_id, _ = survey_clustering(args, work)
    noise = {"min_peak_snr": args.min_peak_snr, "max_noise_ratio": args.max_noise_ratio}
    variants = {
        "plain": {},
        "dedup": {"dedup_threshold": args.threshold},
        "outliers excluded": {"outliers": "exclude", "outlier_share": args.outlier_share},
        f"peak SNR >= {args.min_peak_snr:g}": {"min_peak_snr": args.min_peak_snr},
        f"noise <= {args.max_noise_ratio:g}x": {"max_noise_ratio": args.max_noise_ratio},
        **{f"steer {c}": {"steer_by": c} for c in (args.steer if args.find_sources else [])},
        "all": {
            "dedup_threshold": args.threshold,
            "outliers": "exclude",
            "outlier_share": args.outlier_share,
            **noise,
            **({"steer_by": args.steer[0]} if args.find_sources and args.steer else {}),
        },
    }
    results, directories = {}, {}
    for name, extra in variants.items():
        started = time.perf_counter()
        run = curated_sample(
            clustering_id, SamplingOptions(args.num_samples, **extra), report=False, force=True
        )
        seconds = time.perf_counter() - started
        results[name] = (json.loads((run.output_dir / METRICS).read_text()), seconds)
        directories[name] = run.output_dir
        if name == "plain":
            plain_pairs = _pairs_left(run.output_dir, args.threshold)
    print(
        f"quality curation, {args.mosaics} x {args.mosaic_size} px survey (noise x"
        f"{args.noise_edge_factor:g} at the edges), windows {args.window_size} px, samples of "
        f"{args.num_samples}, threshold {args.threshold}"
    )
    _print(results, plain_pairs)
    for column in args.steer if args.find_sources else []:
        _print_steering(column, directories)


def _pairs_left(sample_dir: Path, threshold: float) -> int:
    """Near-duplicate pairs (same level-1 cluster) in a sample drawn without the option."""
    import numpy as np

    from astrocurate.algorithms.duplicates import pairs_within
    from astrocurate.stages.feature_extraction.outputs import load_features

    info = json.loads((sample_dir / "sampling.json").read_text())
    labels = np.load(Path(info["clustering_dir"]) / "level_1" / "point_labels.npy")
    groups = np.where(labels >= 0, labels, -1 - np.arange(len(labels)))
    features = load_features(info["features_dir"])
    center = np.asarray(features[labels >= 0], dtype=np.float64).mean(axis=0)  # as the step
    selected = np.load(sample_dir / "selected.npy")
    return pairs_within(features, groups, threshold, selected, center=center)


def _print(results: dict, plain_pairs: int) -> None:
    dedup, _ = results["dedup"]
    outliers, _ = results["outliers excluded"]
    print(
        f"near-duplicates in the pool: {dedup['near_duplicates_pool']} "
        f"({dedup['near_duplicate_share_pool']:.1%}); pairs left at the threshold: "
        f"with --dedup-threshold {dedup['near_duplicate_pairs_curated']}, without it "
        f"{plain_pairs}, random sample {dedup['near_duplicate_pairs_random']}"
    )
    classes = sorted(k[len("class_share_") : -len("_pool")] for k in dedup if k.endswith("_pool")
                     and k.startswith("class_share_"))  # fmt: skip
    print("share of each class in each sample (columns: the options it was drawn with)")
    print(f"{'class':<10} {'pool':>6} {'random':>7} " + " ".join(f"{n:>16}" for n in results))
    for name in classes:
        pool = dedup[f"class_share_{name}_pool"]
        random = dedup[f"class_share_{name}_random"]
        cells = " ".join(f"{m[f'class_share_{name}_curated']:>16.3f}" for m, _ in results.values())
        print(f"{name:<10} {pool:>6.3f} {random:>7.3f} {cells}")
    _print_noise(results)
    print("top-100 outliers (isolation forest) by class, against the pool:")
    for name in classes:
        top = outliers.get(f"outlier_top100_class_share_{name}", 0.0)
        pool = dedup[f"class_share_{name}_pool"]
        print(
            f"  {name:<10} {top:.2f} of the top 100 vs {pool:.3f} of the pool ({top / pool:.1f}x)"
        )
    print("seconds per sampling run: " + ", ".join(f"{n} {s:.1f}" for n, (_, s) in results.items()))


def _print_noise(results: dict) -> None:
    """Print the shares of the cutouts flagged empty and noisy: pool, random, curated."""
    for flag in ("faint", "noisy"):
        for name, (metrics, _) in results.items():
            if f"{flag}_share_pool" in metrics:
                print(
                    f"{flag} (flagged by '{name}'): pool {metrics[f'{flag}_share_pool']:.3f}, "
                    f"random {metrics[f'{flag}_share_random']:.3f}, curated "
                    f"{metrics[f'{flag}_share_curated']:.3f}"
                )


def _print_steering(column: str, directories: dict[str, Path]) -> None:
    """Entropy of the column's bins (quartiles of the pool) in each sample, side by side."""
    import numpy as np

    from astrocurate.algorithms.sampling import normalized_entropy
    from astrocurate.io.cutout_store import read_manifest
    from astrocurate.stages.curated_sampling.steering import steer

    info = json.loads((directories["plain"] / "sampling.json").read_text())
    rows = np.arange(len(read_manifest(info["merged_dir"], columns=["cutout_id"])))
    binned = steer(Path(info["merged_dir"]), rows, column, 4)
    k = len(binned.names)

    def entropy(rows_or_all: np.ndarray | slice) -> float:
        return normalized_entropy(np.bincount(binned.labels[rows_or_all], minlength=k), k)

    cells = {"pool": entropy(slice(None))}
    cells["random"] = entropy(np.load(directories["plain"] / "baseline_random.npy"))
    for name, directory in directories.items():
        cells[name] = entropy(np.load(directory / "selected.npy"))
    print(
        f"entropy of the {column} bins ({', '.join(binned.names)}): "
        + ", ".join(f"{n} {v:.3f}" for n, v in cells.items())
    )


if __name__ == "__main__":
    main()
