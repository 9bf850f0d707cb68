"""``sample`` (step 5) and ``report``."""

from __future__ import annotations

import argparse

from astrocurate.cli.base import announce, command, optional_path, positive_int


def _quality_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of quality curation and catalogue steering."""
    parser.add_argument(
        "--dedup-threshold",
        "--dedup_threshold",
        type=float,
        default=None,
        metavar="T",
        help="leave out near-duplicates: cutouts whose features have cosine similarity >= T "
        "(0 < T <= 1) to one of higher peak SNR in their level-1 cluster",
    )
    parser.add_argument(
        "--outliers",
        choices=["none", "list", "exclude", "include"],
        default="none",
        help="score cutouts with an isolation forest on their features: list the top "
        "--outlier-share, exclude them from the sample, or include them all (default none)",
    )
    parser.add_argument(
        "--outlier-share",
        "--outlier_share",
        type=float,
        default=0.01,
        help="share of the pool called outliers, in (0, 0.5] (default 0.01)",
    )
    parser.add_argument(
        "--min-peak-snr",
        "--min_peak_snr",
        type=float,
        default=None,
        metavar="K",
        help="leave out empty sky: cutouts whose peak is less than K noise sigma above their "
        "median (against the rms map where known, else the cutout's robust noise)",
    )
    parser.add_argument(
        "--max-noise-ratio",
        "--max_noise_ratio",
        type=float,
        default=None,
        metavar="F",
        help="leave out too-noisy cutouts: noise above F times the median of their mosaic and "
        "window size, F > 1",
    )
    parser.add_argument(
        "--steer-by",
        "--steer_by",
        default=None,
        metavar="COLUMN",
        help="balance over a source-catalogue column inside every level-1 cluster: "
        "max_size_arcsec, max_flux_jy, n_sources or s_code (needs cutouts --catalogue)",
    )
    parser.add_argument(
        "--steer-bins",
        "--steer_bins",
        default="4",
        metavar="N|EDGES",
        help="bins of --steer-by: N quantile bins (default 4) or increasing edges, e.g. 10,30,60",
    )


def _sample_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--clustering-id", "--clustering_id", required=True, help="finished clustering run ID"
    )
    parser.add_argument(
        "--num-samples",
        "--num_samples",
        required=True,
        type=positive_int,
        help="size of the curated sample (more than the pool takes the whole pool)",
    )
    parser.add_argument(
        "--strategy",
        choices=["r", "c", "f"],
        default="r",
        help="inside a level-1 cluster: r random (default), c closest, f farthest from centroid",
    )
    parser.add_argument(
        "--level",
        type=positive_int,
        default=None,
        help="split the budget from this level down (1-based; default the top level)",
    )
    parser.add_argument(
        "--baseline",
        choices=["none", "random"],
        default="none",
        help="random: a plain uniform sample of the same size instead, for comparison",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--export",
        nargs="+",
        choices=["npy", "hdf5", "fits", "png"],
        default=[],
        help="write the curated pixels: npy (training), hdf5, fits (one per cutout), png",
    )
    _quality_arguments(parser)
    parser.add_argument(
        "--no-report", action="store_true", help="skip the HTML report (astrocurate report)"
    )
    parser.add_argument(
        "--output_path", "--output-path", default=None, help="parent directory (default: input's)"
    )
    parser.add_argument(
        "--force", action="store_true", help="recompute even if an identical finished run exists"
    )


@command(
    "sample", "Draw a balanced curated sample from a clustering run (step 5).", _sample_arguments
)
def _sample(args: argparse.Namespace) -> int:
    from astrocurate.stages.curated_sampling.run import SamplingOptions, curated_sample

    options = SamplingOptions(
        num_samples=args.num_samples,
        strategy=args.strategy,
        level=args.level,
        baseline=args.baseline,
        seed=args.seed,
        export=tuple(args.export),
        dedup_threshold=args.dedup_threshold,
        outliers=args.outliers,
        outlier_share=args.outlier_share,
        min_peak_snr=args.min_peak_snr,
        max_noise_ratio=args.max_noise_ratio,
        steer_by=args.steer_by,
        steer_bins=args.steer_bins,
    )
    run = curated_sample(
        args.clustering_id,
        options,
        output_path=optional_path(args.output_path),
        force=args.force,
        report=not args.no_report,
    )
    announce(run)
    return 0


def _report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", help="curated_sampling or evaluation run ID")


@command("report", "Regenerate the HTML report of a sampling or evaluation run.", _report_arguments)
def _report(args: argparse.Namespace) -> int:
    from astrocurate import steps
    from astrocurate.tracking import get_run

    if get_run(args.run_id, "RUN_ID").step == steps.EVALUATION:
        from astrocurate.stages.evaluation.run import regenerate_report
    else:
        from astrocurate.stages.curated_sampling.run import regenerate_report
    print(regenerate_report(args.run_id))
    return 0
