"""``find-run``: the ID or output directory of the most recent matching run."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from astrocurate.cli.base import command, parse_key_values
from astrocurate.errors import InvalidArgumentError


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

    params = dict(parse_key_values(args.param, "--param"))
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
