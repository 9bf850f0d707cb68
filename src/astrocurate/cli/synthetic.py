"""``make-survey`` (a synthetic survey) and ``demo`` (the pipeline on one)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from astrocurate.cli.base import command, log, number, parse_key_values
from astrocurate.errors import InvalidArgumentError


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
        "--noise-edge-factor",
        type=float,
        default=1.0,
        help="noise rms at a mosaic's edge over its centre's (default 1: uniform noise)",
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
    "noise_edge_factor": "--noise-edge-factor",
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
            k: number(v, f"--class-fractions {k}")
            for k, v in parse_key_values(args.class_fractions.split(","), "--class-fractions")
        }
    try:
        info = make_survey(
            args.output_dir,
            n_mosaics=args.mosaics,
            mosaic_size=args.size,
            noise_rms_jy=args.noise_rms,
            noise_edge_factor=args.noise_edge_factor,
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
