"""``cutouts`` (step 1) and ``merge`` (step 2)."""

from __future__ import annotations

import argparse
from pathlib import Path

from astrocurate.cli.base import (
    announce,
    command,
    common_step_arguments,
    optional_path,
    slurm_array_argument,
    slurm_array_options,
)
from astrocurate.errors import InvalidArgumentError
from astrocurate.launch import add_slurm_arguments


def _cutouts_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mosaics_path", "--mosaics-path", required=True, help="directory of FITS mosaics"
    )
    parser.add_argument(
        "--output_path",
        "--output-path",
        required=True,
        help="parent directory; the run writes OUTPUT_PATH/cutting_out/RUN_ID/",
    )
    parser.add_argument(
        "--window_size", "--window-size", required=True, type=int, help="cutout side in pixels"
    )
    parser.add_argument(
        "--overlap", type=float, default=0.5, help="fractional overlap of windows (default 0.5)"
    )
    parser.add_argument(
        "--max-nan-fraction",
        "--max_nan_fraction",
        type=float,
        default=0.0,
        help="keep windows up to this blank fraction, NaN filled with 0 (default 0: skip any NaN)",
    )
    parser.add_argument(
        "--store",
        choices=["copy", "virtual"],
        default="copy",
        help="copy pixels into per-mosaic arrays (default) or reference the mosaics (virtual)",
    )
    parser.add_argument(
        "--rms-maps",
        "--rms_maps",
        default="auto",
        metavar="auto|none|PATTERN",
        help="each mosaic's noise (rms) map: beside it (auto: LoTSS and PyBDSF names, e.g. "
        "mosaic.rms.fits), none, or a pattern with {dir}, {stem}, {name} (default auto)",
    )
    parser.add_argument(
        "--catalogue",
        default="auto",
        metavar="auto|none|PATTERN|FILE",
        help="source catalogue (PyBDSF source list, FITS or CSV): beside each mosaic (auto: "
        "<stem>.srl.fits, ...), none, a pattern with {dir}, {stem}, {name}, or one "
        "survey-wide file (default auto)",
    )
    parser.add_argument(
        "--sources-id",
        "--sources_id",
        default=None,
        metavar="ID",
        help="a finished source_finding run (astrocurate find-sources): its rms maps and "
        "source lists instead of the files beside the mosaics",
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="parallel mosaics (default: cores)"
    )
    parser.add_argument(
        "--shard",
        default=None,
        metavar="K/N",
        help="cut only shard K of N (mosaics K, K+N, ... of the sorted survey); one run each",
    )
    slurm_array_argument(
        parser, "write a SLURM job-array script cutting the survey in N shards, print its path"
    )
    add_slurm_arguments(parser)
    common_step_arguments(parser)


@command("cutouts", "Cut FITS mosaics into sliding-window cutouts (step 1).", _cutouts_arguments)
def _cutouts(args: argparse.Namespace) -> int:
    from astrocurate.launch import parse_shard
    from astrocurate.stages.cutting_out.run import CutoutOptions, make_cutouts, write_array_script

    options = CutoutOptions(
        args.window_size,
        args.overlap,
        args.max_nan_fraction,
        args.store,
        args.rms_maps,
        args.catalogue,
        args.sources_id,
    )
    if args.slurm_array is not None:
        if args.shard:
            raise InvalidArgumentError("--shard: not with --slurm-array (each task sets its shard)")
        slurm = slurm_array_options(args)
        paths = (Path(args.mosaics_path), Path(args.output_path))
        print(write_array_script(*paths, options, args.slurm_array, slurm))
        return 0
    run = make_cutouts(
        Path(args.mosaics_path),
        Path(args.output_path),
        options,
        workers=args.workers,
        shard=parse_shard(args.shard) if args.shard else None,
        force=args.force,
        progress=args.progress,
    )
    announce(run)
    return 0


# --------------------------------------------------------------------------- merge


def _merge_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cutouts-id",
        "--cutouts_id",
        required=True,
        nargs="+",
        metavar="ID",
        help='IDs of finished cutting_out runs (several words, A,B or "[A, B]")',
    )
    parser.add_argument(
        "--dedup-sky",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="drop cutouts of the same sky from overlapping mosaics (default: on with sky coords)",
    )
    parser.add_argument(
        "--min-peak-snr",
        type=float,
        default=None,
        metavar="K",
        help="drop empty sky before features and clustering: cutouts whose peak is below K "
        "noise sigma (rms map where known, else the cutout's robust noise)",
    )
    parser.add_argument(
        "--max-noise-ratio",
        type=float,
        default=None,
        metavar="F",
        help="drop cutouts whose noise exceeds F times the median of their mosaic and size",
    )
    parser.add_argument(
        "--output_path",
        "--output-path",
        default=None,
        help="parent directory (default: the inputs')",
    )
    common_step_arguments(parser)


@command("merge", "Merge cutout runs into one manifest (step 2).", _merge_arguments)
def _merge(args: argparse.Namespace) -> int:
    from astrocurate.stages.merge_cutouts.run import merge_cutouts
    from astrocurate.tracking.lookup import parse_run_id_list

    ids = parse_run_id_list(args.cutouts_id, "--cutouts-id")
    run = merge_cutouts(
        ids,
        dedup_sky=args.dedup_sky,
        min_peak_snr=args.min_peak_snr,
        max_noise_ratio=args.max_noise_ratio,
        output_path=optional_path(args.output_path),
        force=args.force,
    )
    announce(run)
    return 0
