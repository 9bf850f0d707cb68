"""``find-sources``: the optional source-finding step (PyBDSF on every mosaic)."""

from __future__ import annotations

import argparse

from astrocurate.cli.base import announce, command, common_step_arguments, optional_path


def _find_sources_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mosaics_path", "--mosaics-path", required=True, help="directory of FITS mosaics"
    )
    parser.add_argument(
        "--output_path",
        "--output-path",
        default=None,
        help="parent directory; the run writes OUTPUT_PATH/source_finding/RUN_ID/ "
        "(default: ASTROCURATE_DATA_DIR or ./outputs)",
    )
    parser.add_argument(
        "--thresh-isl",
        "--thresh_isl",
        type=float,
        default=3.0,
        help="island threshold in sigma (PyBDSF thresh_isl, default 3)",
    )
    parser.add_argument(
        "--thresh-pix",
        "--thresh_pix",
        type=float,
        default=5.0,
        help="peak threshold in sigma, at least --thresh-isl (PyBDSF thresh_pix, default 5)",
    )
    parser.add_argument(
        "--rms-box",
        "--rms_box",
        default=None,
        metavar="BOX,STEP",
        help="box and step in pixels of the background rms map (default: PyBDSF's choice)",
    )
    parser.add_argument(
        "--beam",
        default=None,
        metavar="MAJ[,MIN[,PA]]",
        help="restoring beam FWHM in arcsec (and PA in degrees) for every mosaic "
        "(default: each header's BMAJ/BMIN/BPA)",
    )
    parser.add_argument(
        "--frequency",
        type=float,
        default=None,
        metavar="HZ",
        help="frequency in Hz for every mosaic (default: each header's RESTFRQ/FREQ/CRVAL3)",
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="mosaics in parallel (default: cores)"
    )
    common_step_arguments(parser)


@command(
    "find-sources",
    "Find the sources of every mosaic with PyBDSF: source lists and rms maps (optional).",
    _find_sources_arguments,
)
def _find_sources(args: argparse.Namespace) -> int:
    from pathlib import Path

    from astrocurate.stages.source_finding.run import SourceFindingOptions, find_sources

    options = SourceFindingOptions(
        thresh_isl=args.thresh_isl,
        thresh_pix=args.thresh_pix,
        rms_box=args.rms_box,
        beam=args.beam,
        frequency=args.frequency,
        workers=args.workers,
    )
    run = find_sources(
        Path(args.mosaics_path),
        options,
        output_path=optional_path(args.output_path),
        force=args.force,
        progress=args.progress,
    )
    announce(run)
    return 0
