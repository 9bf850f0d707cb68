"""The clustering subcommands: ``clustering-prepare``, ``clustering-run``, ``-status``.

``clustering-prepare`` is step 4a; ``clustering-run`` step 4b (what run.sh calls).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from astrocurate.cli.base import command, log, optional_path
from astrocurate.launch import add_slurm_arguments


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
    helps = {
        "account": "SLURM account",
        "partition": "SLURM partition (default: the config's slurm_partition)",
        "time": "time limit per level job, e.g. 01:00:00",
        "qos": "SLURM quality of service",
    }
    suffix = "; any --slurm_* flag makes run.sh submit one SLURM job per level"
    add_slurm_arguments(parser, helps={k: v + suffix for k, v in helps.items()})
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
    from astrocurate.launch import SlurmOptions
    from astrocurate.stages.clustering.run import load_config, parse_overrides, prepare_clustering

    config = load_config(args.config_file, parse_overrides(args.extra))
    slurm = SlurmOptions.from_namespace(args)
    if not (args.slurm or slurm.given):
        slurm = None
    prepared = prepare_clustering(
        args.features_id,
        config,
        slurm=slurm,
        output_path=optional_path(args.output_path),
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
