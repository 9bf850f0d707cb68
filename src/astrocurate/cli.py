"""The ``astrocurate`` command line: one subcommand per pipeline step and utility.

The guide's scripts under ``scripts/`` call :func:`main` with their subcommand,
so ``python scripts/find_run.py ...`` and ``astrocurate find-run ...`` are the
same code. User errors end with one line on stderr and exit status 1; usage
errors exit 2 (argparse).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from astrocurate import __version__
from astrocurate.errors import AstrocurateError, InvalidArgumentError, StepInterrupted

log = logging.getLogger("astrocurate")

Handler = Callable[[argparse.Namespace], int]
_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Handler]] = {}


def command(name: str, help_text: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    """Register a subcommand: ``add_arguments`` builds its parser, the function runs it."""

    def register(handler: Handler) -> Handler:
        _COMMANDS[name] = (help_text, add_arguments, handler)
        return handler

    return register


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """Return the top-level parser with every registered subcommand.

    Parameters
    ----------
    prog : str, optional
        Program name shown by the subcommand parsers (the guide's script name).
    """
    parser = argparse.ArgumentParser(
        prog="astrocurate",
        description="Curate balanced image sets for self-supervised learning from FITS surveys.",
    )
    parser.add_argument("--version", action="version", version=f"astrocurate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_arguments, _) in _COMMANDS.items():
        kwargs = {"prog": prog} if prog else {}
        subparser = sub.add_parser(name, help=help_text, description=help_text, **kwargs)
        subparser.add_argument(
            "-q", "--quiet", action="store_true", help="only warnings and errors"
        )
        add_arguments(subparser)
    return parser


def configure_logging(quiet: bool = False) -> None:
    """Send astrocurate's messages to stderr, quieten MLflow's database chatter.

    MLflow prints "View run ... at: URL" on stdout when a run ends on a tracking server;
    stdout is the run ID alone (``RUN_ID=$(python scripts/merge.py ...)``), so it is off.
    """
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("alembic", "mlflow", "urllib3", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run the command line and return the exit status.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; default ``sys.argv[1:]``.
    prog : str, optional
        Name to show in messages instead of ``astrocurate COMMAND``.
    """
    parser = build_parser(prog)
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    configure_logging(args.quiet)
    name = prog or f"astrocurate {args.command}"
    try:
        return _COMMANDS[args.command][2](args)
    except AstrocurateError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a full disk, a vanished or unwritable file: no traceback
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 1
    except (StepInterrupted, KeyboardInterrupt) as exc:
        print(f"{name}: {exc or 'interrupted'}; rerun the same command to resume", file=sys.stderr)
        return 130


def run_script(command_name: str, script: str) -> None:
    """Entry point of the guide's scripts: run one subcommand and exit with its status."""
    sys.exit(main([command_name, *sys.argv[1:]], prog=script))


# --------------------------------------------------------------------------- find-run


def _find_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-name", required=True, help="step run name, e.g. cutting_out")
    parser.add_argument(
        "--cutout-ids",
        nargs="+",
        metavar="ID",
        help='merge runs whose inputs are exactly these cutout runs: "[A, B]", A,B or A B',
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="parameter filter (repeatable); --KEY VALUE works too, e.g. --window_size 64",
    )
    parser.add_argument(
        "--get-path", action="store_true", help="print the run's output directory, not its ID"
    )
    parser.add_argument(
        "--include-unfinished",
        action="store_true",
        help="also consider runs that are running, failed or killed",
    )
    parser.set_defaults(accepts_extra=True)


@command(
    "find-run",
    "Print the ID (or output directory) of the most recent matching run.",
    _find_run_arguments,
)
def _find_run(args: argparse.Namespace) -> int:
    from astrocurate.tracking.lookup import find_run, output_path, parse_run_id_list

    params = dict(_parse_key_values(args.param, "--param"))
    params.update(_parse_extra_filters(args.extra))
    inputs = parse_run_id_list(args.cutout_ids) if args.cutout_ids else None
    record = find_run(
        args.run_name,
        params=params,
        input_run_ids=inputs,
        include_unfinished=args.include_unfinished,
    )
    print(output_path(record) if args.get_path else record.run_id)
    return 0


def _parse_key_values(items: Sequence[str], option: str) -> list[tuple[str, str]]:
    """Parse ``KEY=VALUE`` items."""
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidArgumentError(f"{option}: expected KEY=VALUE, got {item!r}")
        pairs.append((key.strip(), value.strip()))
    return pairs


def _number(text: str, option: str) -> float:
    """``text`` as a float, or a one-line error naming ``option``."""
    try:
        return float(text)
    except ValueError:
        raise InvalidArgumentError(f"{option}: expected a number, got {text!r}") from None


def _parse_extra_filters(extra: Sequence[str]) -> dict[str, str]:
    """Parse free parameter filters ``--KEY VALUE`` or ``--KEY=VALUE``."""
    filters: dict[str, str] = {}
    tokens = list(extra)
    while tokens:
        token = tokens.pop(0)
        if not token.startswith("--") or len(token) < 3:
            raise InvalidArgumentError(
                f"unexpected argument {token!r}; filters look like --KEY VALUE"
            )
        key, sep, value = token[2:].partition("=")
        if not sep:
            if not tokens or tokens[0].startswith("--"):
                raise InvalidArgumentError(f"--{key}: expected a value to filter on")
            value = tokens.pop(0)
        filters[key] = value
    return filters


# --------------------------------------------------------------------------- cutouts


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
        "--workers", type=int, default=None, help="parallel mosaics (default: cores)"
    )
    parser.add_argument(
        "--shard",
        default=None,
        metavar="K/N",
        help="cut only shard K of N (mosaics K, K+N, ... of the sorted survey); one run each",
    )
    parser.add_argument(
        "--slurm-array",
        "--slurm_array",
        type=int,
        default=None,
        metavar="N",
        help="write a SLURM job-array script cutting the survey in N shards, print its path",
    )
    _slurm_arguments(parser)
    _common_step_arguments(parser)


def _slurm_arguments(parser: argparse.ArgumentParser) -> None:
    for name in ("account", "partition", "time", "qos"):
        parser.add_argument(f"--slurm_{name}", f"--slurm-{name}", default=None)


def _common_step_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--force", action="store_true", help="recompute even if an identical finished run exists"
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: on a terminal)",
    )


@command("cutouts", "Cut FITS mosaics into sliding-window cutouts (step 1).", _cutouts_arguments)
def _cutouts(args: argparse.Namespace) -> int:
    from astrocurate.launch import parse_shard
    from astrocurate.stages.cutting_out.run import CutoutOptions, make_cutouts

    options = CutoutOptions(args.window_size, args.overlap, args.max_nan_fraction, args.store)
    if args.slurm_array is not None:
        print(_write_cutouts_array(args, options))
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
    _announce(run)
    return 0


def _write_cutouts_array(args: argparse.Namespace, options) -> Path:
    """Write the SLURM array script of ``cutouts --slurm-array N``; return its path."""
    from astrocurate.launch import SlurmOptions
    from astrocurate.stages.cutting_out.run import write_array_script

    if args.shard:
        raise InvalidArgumentError("--shard: not with --slurm-array (each task sets its shard)")
    slurm = SlurmOptions(args.slurm_account, args.slurm_partition, args.slurm_time, args.slurm_qos)
    paths = (Path(args.mosaics_path), Path(args.output_path))
    return write_array_script(*paths, options, args.slurm_array, slurm)


def _announce(run) -> None:
    """Say which run holds the result: the ID on stdout, the story on stderr."""
    verb = "reused finished" if run.reused else "finished"
    log.info("%s %s run %s; outputs in %s", verb, run.step, run.run_id, run.output_dir)
    print(run.run_id)


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
        "--output_path",
        "--output-path",
        default=None,
        help="parent directory (default: the inputs')",
    )
    _common_step_arguments(parser)


@command("merge", "Merge cutout runs into one manifest (step 2).", _merge_arguments)
def _merge(args: argparse.Namespace) -> int:
    from astrocurate.stages.merge_cutouts.run import merge_cutouts
    from astrocurate.tracking.lookup import parse_run_id_list

    ids = parse_run_id_list(args.cutouts_id, "--cutouts-id")
    run = merge_cutouts(
        ids,
        dedup_sky=args.dedup_sky,
        output_path=Path(args.output_path) if args.output_path else None,
        force=args.force,
    )
    _announce(run)
    return 0


# --------------------------------------------------------------------------- make-survey


def _survey_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output_dir", help="directory to write the survey into")
    parser.add_argument("--mosaics", type=int, default=4, help="number of mosaics (default 4)")
    parser.add_argument(
        "--size", type=int, default=1024, help="mosaic side in pixels (default 1024)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--noise-rms", type=float, default=1e-4, help="noise rms in Jy/beam (default 1e-4)"
    )
    parser.add_argument(
        "--class-fractions",
        default=None,
        metavar="CLASS=F,...",
        help="source class mix, e.g. point=0.85,double=0.1,diffuse=0.04,artefact=0.01",
    )
    parser.add_argument(
        "--layout", choices=["lotss", "flat"], default="lotss", help="file layout (default lotss)"
    )


#: make_survey's parameter names, as the command line spells them.
_SURVEY_FLAGS = {
    "n_mosaics": "--mosaics",
    "mosaic_size": "--size",
    "noise_rms_jy": "--noise-rms",
    "class_fractions": "--class-fractions",
    "seed": "--seed",
    "layout": "--layout",
}


def _with_flag_names(message: str, flags: dict[str, str]) -> str:
    """``message`` with a library's parameter names (``n_mosaics=0``) as flags (``--mosaics 0``)."""
    for name, flag in flags.items():
        message = re.sub(rf"\b{name}=", f"{flag} ", message)
        message = re.sub(rf"\b{name}\b", flag, message)
    return message


@command(
    "make-survey",
    "Write a synthetic LoTSS-like radio survey with a truth catalogue.",
    _survey_arguments,
)
def _make_survey(args: argparse.Namespace) -> int:
    from astrocurate.synthetic.survey import make_survey

    if Path(args.output_dir).exists() and not Path(args.output_dir).is_dir():
        raise InvalidArgumentError(f"OUTPUT_DIR: {args.output_dir} exists and is not a directory")
    fractions = None
    if args.class_fractions:
        fractions = {
            k: _number(v, f"--class-fractions {k}")
            for k, v in _parse_key_values(args.class_fractions.split(","), "--class-fractions")
        }
    try:
        info = make_survey(
            args.output_dir,
            n_mosaics=args.mosaics,
            mosaic_size=args.size,
            noise_rms_jy=args.noise_rms,
            class_fractions=fractions,
            seed=args.seed,
            layout=args.layout,
        )
    except ValueError as exc:
        raise InvalidArgumentError(_with_flag_names(str(exc), _SURVEY_FLAGS)) from exc
    log.info(
        "wrote %d mosaics with %d sources (%s) to %s",
        len(info.mosaic_paths),
        info.n_sources,
        ", ".join(f"{k} {v}" for k, v in info.class_counts.items()),
        info.output_dir,
    )
    print(info.output_dir)
    return 0


# --------------------------------------------------------------------------- demo


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mosaics",
        default=None,
        help="use this directory of mosaics instead of a synthetic survey",
    )
    parser.add_argument(
        "--workdir", default="demo", help="where the survey and outputs go (default ./demo)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic survey")


@command("demo", "Run the pipeline on a built-in synthetic survey.", _demo_arguments)
def _demo(args: argparse.Namespace) -> int:
    from astrocurate.demo import run_demo

    mosaics = Path(args.mosaics) if args.mosaics else None
    try:
        run_demo(Path(args.workdir), mosaics=mosaics, seed=args.seed)
    except InvalidArgumentError as exc:  # the cutting step names its own flag
        message = str(exc)
        if mosaics is not None and message.startswith("--mosaics_path:"):
            raise InvalidArgumentError(
                "--mosaics:" + message.removeprefix("--mosaics_path:")
            ) from None
        raise
    return 0


# --------------------------------------------------------------------------- features


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
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--shard-rows",
        type=int,
        default=8192,
        help="rows per resumable block, the unit of resuming and of --shard (default 8192)",
    )
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--output_path", "--output-path", default=None)
    _features_shard_arguments(parser)
    _common_step_arguments(parser)


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
    group.add_argument(
        "--slurm-array",
        "--slurm_array",
        type=int,
        default=None,
        metavar="N",
        help="write a script that submits N shards as a SLURM job array plus the finishing "
        "job, print its path (run the script to submit)",
    )
    _slurm_arguments(group)
    group.add_argument(
        "--slurm_gres", "--slurm-gres", default=None, help="--gres of each task, e.g. gpu:1"
    )
    group.add_argument(
        "--slurm_cpus_per_task",
        "--slurm-cpus-per-task",
        type=int,
        default=None,
        metavar="C",
        help="--cpus-per-task of each task: the model's threads and loader workers "
        "(default: the partition's, often 1)",
    )


def _feature_options(args: argparse.Namespace):
    from astrocurate.algorithms.normalization import NormalizationConfig
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

    options = _feature_options(args)
    modes = [f for f, on in (("--shard", args.shard), ("--finish", args.finish)) if on]
    if args.slurm_array is not None:
        modes.append("--slurm-array")
    if len(modes) > 1:
        raise InvalidArgumentError(f"{modes[0]}: not with {modes[1]}")
    if args.slurm_array is not None:
        print(_write_features_array(args, options))
        return 0
    if args.finish:
        return _finish_features(args, options)
    if args.shard:
        return _features_shard(args, options)
    run = extract_features(
        args.merged_cutouts_id,
        options,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        output_path=_output_path(args),
        force=args.force,
        progress=args.progress,
    )
    _announce(run)
    return 0


def _output_path(args: argparse.Namespace) -> Path | None:
    return Path(args.output_path) if args.output_path else None


def _features_shard(args: argparse.Namespace, options) -> int:
    """``features --shard K/N``: one shard; prints the shared run's ID."""
    from astrocurate.stages.feature_extraction.run import plan_extraction
    from astrocurate.stages.feature_extraction.shards import extract_shard, parse_shard_spec

    shard = parse_shard_spec(args.shard)
    if args.force:
        raise InvalidArgumentError("--force: not with --shard (every shard must find the same run)")
    plan = plan_extraction(
        args.merged_cutouts_id,
        options,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        output_path=_output_path(args),
    )
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    result = extract_shard(plan, shard, progress=progress)
    print(result.run.run_id)
    return 0


def _finish_features(args: argparse.Namespace, options) -> int:
    """``features --finish``: finish the run of these arguments (the device does not matter)."""
    from astrocurate.stages.feature_extraction.run import plan_extraction
    from astrocurate.stages.feature_extraction.shards import find_run_of, finish_run

    plan = plan_extraction(
        args.merged_cutouts_id,
        options,
        batch_size=args.batch_size,
        workers=0,
        device="cpu",
        output_path=_output_path(args),
    )
    _announce(finish_run(find_run_of(plan), "--finish"))
    return 0


def _write_features_array(args: argparse.Namespace, options) -> Path:
    """Write the SLURM script of ``features --slurm-array N``; return its path."""
    from astrocurate.launch import SlurmOptions
    from astrocurate.stages.feature_extraction.job_array import write_array_script
    from astrocurate.stages.feature_extraction.run import plan_extraction

    if args.slurm_array < 1:
        raise InvalidArgumentError(f"--slurm-array: expected N >= 1, got {args.slurm_array}")
    if args.force:
        raise InvalidArgumentError("--force: not with --slurm-array (the shards share one run)")
    slurm = SlurmOptions.from_namespace(args).validate()
    # Check the arguments here, not in N jobs: the merge run, the model, its weights.
    plan = plan_extraction(
        args.merged_cutouts_id,
        options,
        batch_size=args.batch_size,
        workers=0,
        device="cpu",
        output_path=_output_path(args),
    )
    return write_array_script(
        plan,
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

    _announce(finish_run(args.run_id))
    return 0


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    del parser


@command("backbones", "List the feature backbones.", _no_arguments)
def _backbones(args: argparse.Namespace) -> int:
    from astrocurate.algorithms.backbones.registry import list_backbones

    del args
    for line in list_backbones():
        print(line)
    return 0


# --------------------------------------------------------------------------- clustering


def _clustering_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--features-id", "--features_id", required=True, help="feature_extraction run ID"
    )
    parser.add_argument(
        "--config_file",
        "--config-file",
        required=True,
        help="clustering config (YAML), e.g. configs/clusters/A_3M_3lvl_60k_4k_300.yaml",
    )
    for name, help_text in (
        ("account", "SLURM account"),
        ("partition", "SLURM partition (default: the config's slurm_partition)"),
        ("time", "time limit per level job, e.g. 01:00:00"),
        ("qos", "SLURM quality of service"),
    ):
        parser.add_argument(
            f"--slurm_{name}",
            f"--slurm-{name}",
            default=None,
            help=f"{help_text}; any --slurm_* flag makes run.sh submit one SLURM job per level",
        )
    parser.add_argument(
        "--slurm", action="store_true", help="submit to SLURM even without other --slurm_* flags"
    )
    parser.add_argument(
        "--output_path",
        "--output-path",
        default=None,
        help="parent directory (default: the feature run's); the run writes "
        "OUTPUT_PATH/clustering/RUN_ID/",
    )
    parser.add_argument(
        "--force", action="store_true", help="prepare a new run even if an identical one exists"
    )
    parser.epilog = (
        "Further words key=value override config keys, e.g. n_iters=5 n_clusters=[64,8]."
    )
    parser.set_defaults(accepts_extra=True)


@command(
    "clustering-prepare",
    "Prepare a clustering experiment: config.yaml and run.sh (step 4a); prints its directory.",
    _clustering_prepare_arguments,
)
def _clustering_prepare(args: argparse.Namespace) -> int:
    from astrocurate.stages.clustering.run import (
        SlurmOptions,
        load_config,
        parse_overrides,
        prepare_clustering,
    )

    config = load_config(args.config_file, parse_overrides(args.extra))
    flags = (args.slurm_account, args.slurm_partition, args.slurm_time, args.slurm_qos)
    slurm = None
    if args.slurm or any(f is not None for f in flags):
        slurm = SlurmOptions(*flags)
    prepared = prepare_clustering(
        args.features_id,
        config,
        slurm=slurm,
        output_path=Path(args.output_path) if args.output_path else None,
        force=args.force,
    )
    if prepared.status == "FINISHED":
        log.info("clustering run %s is already finished in %s", prepared.run_id, prepared.directory)
    else:
        log.info(
            "clustering run %s %s; next: cd %s && ./run.sh",
            prepared.run_id,
            "reused" if prepared.reused else "prepared",
            prepared.directory,
        )
    print(prepared.directory)
    return 0


def _clustering_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", help="experiment directory made by step 4a")
    parser.add_argument(
        "--level",
        type=int,
        default=None,
        help="compute the levels up to this one (1-based; one SLURM job per level)",
    )


@command(
    "clustering-run",
    "Run a prepared clustering experiment (step 4b; what run.sh calls).",
    _clustering_run_arguments,
)
def _clustering_run(args: argparse.Namespace) -> int:
    from astrocurate.stages.clustering.run import RequeueRequested, run_clustering

    try:
        result = run_clustering(Path(args.directory), level=args.level)
    except RequeueRequested as exc:  # the SLURM job is requeued and resumes from its checkpoint
        log.warning("%s", exc)
        return 0
    log.info(
        "clustering run %s: %s (%d levels done) in %s",
        result.run_id,
        result.status,
        result.levels_done,
        result.directory,
    )
    print(result.run_id)
    return 0


def _clustering_status_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", help="experiment directory made by step 4a")


@command(
    "clustering-status",
    "Exit 0 if the clustering of an experiment directory is finished, else explain.",
    _clustering_status_arguments,
)
def _clustering_status(args: argparse.Namespace) -> int:
    from astrocurate.stages.clustering.run import clustering_status

    record = clustering_status(Path(args.directory))
    log.info("clustering run %s is FINISHED", record.run_id)
    print(record.run_id)
    return 0


# --------------------------------------------------------------------------- sampling


def _positive_int(text: str) -> int:
    """Argparse type: a whole number >= 1 (a usage error otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def _sample_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--clustering-id", "--clustering_id", required=True, help="finished clustering run ID"
    )
    parser.add_argument(
        "--num-samples",
        "--num_samples",
        required=True,
        type=_positive_int,
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
        type=_positive_int,
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
    )
    run = curated_sample(
        args.clustering_id,
        options,
        output_path=Path(args.output_path) if args.output_path else None,
        force=args.force,
        report=not args.no_report,
    )
    _announce(run)
    return 0


def _report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", help="curated_sampling run ID")


@command("report", "Regenerate the HTML report of a sampling run.", _report_arguments)
def _report(args: argparse.Namespace) -> int:
    from astrocurate.stages.curated_sampling.run import regenerate_report

    print(regenerate_report(args.run_id))
    return 0


# --------------------------------------------------------------------------- verify


def _verify_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", metavar="RUN_ID", help="the run to verify")
    parser.add_argument(
        "--no-parents",
        action="store_true",
        help="skip the lineage check (input runs exist, are FINISHED, outputs unchanged)",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="also fail on changes under logs/ and report/ (written after a run, e.g. by SLURM)",
    )
    parser.add_argument(
        "--workers", type=_positive_int, default=None, help="files hashed in parallel"
    )


class _ByteProgress:
    """Progress of a hash on stderr (a terminal only), thread-safe, at most 5 updates/s."""

    def __init__(self, label: str) -> None:
        import threading

        self.label, self.total, self.done, self.shown = label, 0, 0, 0.0
        self.lock = threading.Lock()

    def start(self, total: int) -> None:
        self.total = total

    def __call__(self, n: int) -> None:
        import time

        with self.lock:
            self.done += n
            now = time.monotonic()
            if now - self.shown < 0.2:
                return
            self.shown = now
            share = 100 * self.done / self.total if self.total else 100.0
            print(
                f"\r{self.label}: {self.done / 2**30:.2f} of {self.total / 2**30:.2f} GiB "
                f"hashed ({share:.0f}%)",
                end="",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.shown:
            print("\r\033[K", end="", file=sys.stderr, flush=True)


@command(
    "verify",
    "Hash a run's outputs again, compare with its record, check its lineage (exit 1 on a "
    "difference).",
    _verify_arguments,
)
def _verify(args: argparse.Namespace) -> int:
    from astrocurate.tracking.lookup import verify_run

    progress = _ByteProgress(f"verify {args.run_id}") if sys.stderr.isatty() else None
    try:
        report = verify_run(
            args.run_id,
            parents=not args.no_parents,
            workers=args.workers,
            progress=progress,
            on_total=progress.start if progress else None,
        )
    finally:
        if progress:
            progress.close()
    for finding in report.findings:
        print(finding.line())
    print(report.summary(args.strict))
    return 1 if report.problems(args.strict) else 0


if __name__ == "__main__":  # python -m astrocurate.cli (run.sh of a clustering)
    sys.exit(main())
