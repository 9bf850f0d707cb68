"""What the subcommand modules share: the registry, common flags, argument parsers.

A subcommand module registers each handler with :func:`command`; the package's
:func:`astrocurate.cli.build_parser` builds the parser from :data:`COMMANDS`. Imports of
the steps stay inside the handlers, so ``astrocurate --help`` and ``find-run`` start fast.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from astrocurate.errors import InvalidArgumentError

if TYPE_CHECKING:
    from astrocurate.launch import SlurmOptions

#: The command line's logger: its messages read ``astrocurate: ...``.
log = logging.getLogger("astrocurate")

Handler = Callable[[argparse.Namespace], int]
Arguments = Callable[[argparse.ArgumentParser], None]
#: Subcommand name -> (help, function adding its arguments, handler), in registration order.
COMMANDS: dict[str, tuple[str, Arguments, Handler]] = {}


def command(name: str, help_text: str, add_arguments: Arguments) -> Callable[[Handler], Handler]:
    """Register a subcommand: ``add_arguments`` builds its parser, the function runs it."""

    def register(handler: Handler) -> Handler:
        COMMANDS[name] = (help_text, add_arguments, handler)
        return handler

    return register


def no_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of a subcommand that takes none."""
    del parser


def common_step_arguments(parser: argparse.ArgumentParser) -> None:
    """``--force`` and ``--progress``, taken by every step."""
    parser.add_argument(
        "--force", action="store_true", help="recompute even if an identical finished run exists"
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: on a terminal)",
    )


def slurm_array_argument(parser: Any, help_text: str) -> None:
    """Add ``--slurm-array N`` (write a job-array script) to a parser or argument group."""
    parser.add_argument(
        "--slurm-array", "--slurm_array", type=int, default=None, metavar="N", help=help_text
    )


def slurm_array_options(args: argparse.Namespace) -> SlurmOptions:
    """Check ``--slurm-array N`` and the ``--slurm_*`` flags; return the SLURM options.

    Raises
    ------
    InvalidArgumentError
        For N < 1 or a bad SLURM value.
    """
    from astrocurate.launch import SlurmOptions

    if args.slurm_array < 1:
        raise InvalidArgumentError(f"--slurm-array: expected N >= 1, got {args.slurm_array}")
    return SlurmOptions.from_namespace(args).validate()


def announce(run) -> None:
    """Say which run holds the result: the ID on stdout, the story on stderr."""
    verb = "reused finished" if run.reused else "finished"
    log.info("%s %s run %s; outputs in %s", verb, run.step, run.run_id, run.output_dir)
    print(run.run_id)


def optional_path(text: str | None) -> Path | None:
    """``Path(text)``, or None for an absent option."""
    return Path(text) if text else None


def parse_key_values(items: Sequence[str], option: str) -> list[tuple[str, str]]:
    """Parse ``KEY=VALUE`` items."""
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidArgumentError(f"{option}: expected KEY=VALUE, got {item!r}")
        pairs.append((key.strip(), value.strip()))
    return pairs


def number(text: str, option: str) -> float:
    """``text`` as a float, or a one-line error naming ``option``."""
    try:
        return float(text)
    except ValueError:
        raise InvalidArgumentError(f"{option}: expected a number, got {text!r}") from None


def positive_int(text: str) -> int:
    """Argparse type: a whole number >= 1 (a usage error otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value
