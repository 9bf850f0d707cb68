"""``features`` (step 3), ``features-finish`` and ``backbones``.

``features`` computes a run whole, one shard of it, or writes a SLURM job array.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from astrocurate.algorithms.precision import PRECISIONS
from astrocurate.cli.base import (
    announce,
    command,
    common_step_arguments,
    no_arguments,
    optional_path,
    slurm_array_argument,
    slurm_array_options,
)
from astrocurate.errors import InvalidArgumentError
from astrocurate.launch import add_slurm_arguments


def _features_arguments(parser: argparse.ArgumentParser) -> None:
    # Literal defaults: importing torch here would slow every command (find_run included).
    defaults = {"method": "asinh", "low": 1.0, "high": 99.5, "soft": 0.1, "sigma": 3.0}
    parser.add_argument(
        "--merged-cutouts-id", "--merged_cutouts_id", required=True, help="merge_cutouts run ID"
    )
    parser.add_argument(
        "--model",
        default=None,
        help="backbone (default scattering-j4-rot-renorm-max; `astrocurate backbones` lists them)",
    )
    parser.add_argument("--weights", default=None, help="local weights file (safetensors or .pt)")
    parser.add_argument("--arch", default=None, help="architecture of an SSL checkpoint")
    parser.add_argument("--pooling", default=None, help="layer/pooling giving the vector")
    parser.add_argument("--channels", choices=["repeat", "fold"], default="repeat")
    parser.add_argument("--resize", type=int, default=None, help="input side (default: model's)")
    parser.add_argument(
        "--normalization",
        default=defaults["method"],
        help="per-cutout normalisation: minmax, zscore, asinh (default), sigma_clip, fixed",
    )
    parser.add_argument("--low-percentile", type=float, default=defaults["low"])
    parser.add_argument("--high-percentile", type=float, default=defaults["high"])
    parser.add_argument("--asinh-softening", type=float, default=defaults["soft"])
    parser.add_argument("--sigma", type=float, default=defaults["sigma"])
    parser.add_argument("--norm-mean", type=float, default=0.0, help="for 'fixed'")
    parser.add_argument("--norm-std", type=float, default=1.0, help="for 'fixed'")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="fp32 (default); bf16 or fp16 autocast on a GPU; bf16 also on a CPU with bf16 "
        "instructions (AVX512-BF16, AMX), where CNNs and ViTs run 1.4-2.5x as fast",
    )
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--shard-rows",
        type=int,
        default=8192,
        help="rows per resumable block, the unit of resuming and of --shard (default 8192)",
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="threads reading the cutouts ahead of the model"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--output_path", "--output-path", default=None)
    _features_shard_arguments(parser)
    common_step_arguments(parser)


def _features_shard_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "sharding",
        "N processes (SLURM array tasks, torchrun ranks) fill one run and one matrix; "
        "the shard that completes the last block finishes the run, or run "
        "`astrocurate features-finish RUN_ID`",
    )
    group.add_argument(
        "--shard",
        default=None,
        metavar="K/N|auto",
        help="compute only shard K of N (0-based; a contiguous range of the blocks) of the "
        "run every shard shares; auto: K/N from SLURM_ARRAY_TASK_ID, torchrun's RANK or "
        "srun's SLURM_PROCID",
    )
    group.add_argument(
        "--finish",
        action="store_true",
        help="compute nothing: finish the run these arguments name once every shard is done "
        "(what features-finish does; the SLURM array's last job runs it)",
    )
    slurm_array_argument(
        group,
        "write a script that submits N shards as a SLURM job array plus the finishing "
        "job, print its path (run the script to submit)",
    )
    add_slurm_arguments(group)
    add_slurm_arguments(
        group,
        ("gres", "cpus_per_task"),
        {
            "gres": "--gres of each task, e.g. gpu:1",
            "cpus_per_task": "--cpus-per-task of each task: the model's threads and loader "
            "workers (default: the partition's, often 1)",
        },
    )


def _feature_options(args: argparse.Namespace):
    from astrocurate.algorithms.normalization_config import NormalizationConfig
    from astrocurate.stages.feature_extraction.run import DEFAULT_MODEL, FeatureOptions

    normalization = NormalizationConfig(
        method=args.normalization,
        low_percentile=args.low_percentile,
        high_percentile=args.high_percentile,
        asinh_softening=args.asinh_softening,
        sigma=args.sigma,
        mean=args.norm_mean,
        std=args.norm_std,
    )
    return FeatureOptions(
        model=args.model or DEFAULT_MODEL,
        weights=args.weights,
        arch=args.arch,
        pooling=args.pooling,
        channels=args.channels,
        resize=args.resize,
        normalization=normalization,
        precision=args.precision,
        output_dtype=args.dtype,
        shard_rows=args.shard_rows,
    )


@command("features", "Compute a feature vector per cutout (step 3).", _features_arguments)
def _features(args: argparse.Namespace) -> int:
    from astrocurate.stages.feature_extraction.run import extract_features

    mode = _mode(args)
    options = _feature_options(args)
    if mode == "--slurm-array":
        print(_write_array_script(args, options))
        return 0
    if mode == "--finish":
        return _finish_features(args, options)
    if mode == "--shard":
        return _features_shard(args, options)
    run = extract_features(
        args.merged_cutouts_id,
        options,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        output_path=optional_path(args.output_path),
        force=args.force,
        progress=args.progress,
    )
    announce(run)
    return 0


def _mode(args: argparse.Namespace) -> str | None:
    """Return the one mode flag given (``--shard``, ``--finish``, ``--slurm-array``) or None.

    Raises
    ------
    InvalidArgumentError
        For two modes, or ``--force`` with a mode whose processes share one run.
    """
    given = (
        ("--shard", bool(args.shard)),
        ("--finish", args.finish),
        ("--slurm-array", args.slurm_array is not None),
    )
    modes = [flag for flag, on in given if on]
    if len(modes) > 1:
        raise InvalidArgumentError(f"{modes[0]}: not with {modes[1]}")
    mode = modes[0] if modes else None
    if args.force and mode == "--shard":
        raise InvalidArgumentError("--force: not with --shard (every shard must find the same run)")
    if args.force and mode == "--slurm-array":
        raise InvalidArgumentError("--force: not with --slurm-array (the shards share one run)")
    return mode


def _plan(args: argparse.Namespace, options, computing: bool):
    """Plan the run these arguments name; a plan that computes nothing runs on the CPU."""
    from astrocurate.stages.feature_extraction.run import plan_extraction

    return plan_extraction(
        args.merged_cutouts_id,
        options,
        batch_size=args.batch_size,
        workers=args.workers if computing else 0,
        device=args.device if computing else "cpu",
        output_path=optional_path(args.output_path),
    )


def _features_shard(args: argparse.Namespace, options) -> int:
    """``features --shard K/N``: one shard; prints the shared run's ID."""
    from astrocurate.launch import parse_shard_spec
    from astrocurate.stages.feature_extraction.shards import extract_shard

    shard = parse_shard_spec(args.shard)
    plan = _plan(args, options, computing=True)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    result = extract_shard(plan, shard, progress=progress)
    print(result.run.run_id)
    return 0


def _finish_features(args: argparse.Namespace, options) -> int:
    """``features --finish``: finish the run of these arguments (the device does not matter)."""
    from astrocurate.stages.feature_extraction.shards import find_run_of, finish_run

    announce(finish_run(find_run_of(_plan(args, options, computing=False)), "--finish"))
    return 0


def _write_array_script(args: argparse.Namespace, options) -> Path:
    """``features --slurm-array N``: write the job-array script; return its path.

    The merge run, the model and its weights are checked here, not in N jobs.
    """
    from astrocurate.stages.feature_extraction.job_array import write_array_script

    slurm = slurm_array_options(args)
    return write_array_script(
        _plan(args, options, computing=False),
        args.slurm_array,
        slurm,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
    )


def _features_finish_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", metavar="RUN_ID", help="the feature_extraction run of the shards")


@command(
    "features-finish",
    "Finish a feature run computed in shards (features --shard): check that every block is "
    "done, then rename the matrix, hash the outputs and mark the run FINISHED. Exits 1 naming "
    "the missing rows and the shards to run again; does nothing on a finished run.",
    _features_finish_arguments,
)
def _features_finish(args: argparse.Namespace) -> int:
    from astrocurate.stages.feature_extraction.shards import finish_run

    announce(finish_run(args.run_id))
    return 0


@command("backbones", "List the feature backbones.", no_arguments)
def _backbones(args: argparse.Namespace) -> int:
    from astrocurate.algorithms.backbones.registry import list_backbones

    del args
    for line in list_backbones():
        print(line)
    return 0
