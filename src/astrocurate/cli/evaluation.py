"""``evaluate`` (step 6): pretrain on the curated and the random sample, compare them."""

from __future__ import annotations

import argparse

from astrocurate.algorithms.ssl.config import PRETRAIN_PRECISIONS
from astrocurate.cli.base import announce, command, optional_path, positive_int


def _evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sampling-id", "--sampling_id", required=True, help="finished curated_sampling run ID"
    )
    parser.add_argument(
        "--labels",
        default=None,
        metavar="FILE",
        help="labelled cutouts: a CSV of file_path,categories (or cutout_id[,run_id] or "
        "mosaic,x0,y0,window_size with categories); default the survey's truth catalogue",
    )
    parser.add_argument(
        "--weights",
        nargs="+",
        default=[],
        metavar="FILE",
        help="also score these ResNet-18 encoders trained elsewhere (timm or torchvision names; "
        "an RGB first layer is folded to one channel)",
    )
    parser.add_argument(
        "--arms",
        nargs="*",
        choices=["curated", "random", "pool"],
        default=["curated", "random"],
        help="what to pretrain on (default: curated random); none with --weights only",
    )
    parser.add_argument("--seeds", type=positive_int, default=3, help="seeds 0..N-1 (default 3)")
    parser.add_argument(
        "--method", choices=["simclr", "byol"], default="simclr", help="SSL method (lightly)"
    )
    parser.add_argument(
        "--images-seen",
        "--images_seen",
        type=positive_int,
        default=50_000,
        help="pretraining budget per arm and seed, in images (default 50000)",
    )
    parser.add_argument("--batch-size", "--batch_size", type=positive_int, default=128)
    parser.add_argument(
        "--image-size",
        "--image_size",
        type=positive_int,
        default=64,
        help="side the cutouts are resized to for training (default 64)",
    )
    parser.add_argument("--learning-rate", "--learning_rate", type=float, default=1e-3)
    parser.add_argument(
        "--max-per-category",
        type=positive_int,
        default=200,
        help="score at most N labelled cutouts per category (default 200)",
    )
    parser.add_argument("--folds", type=positive_int, default=5, help="probe folds (default 5)")
    parser.add_argument("--knn-k", type=positive_int, default=20, help="kNN neighbours (20)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument(
        "--precision",
        choices=PRETRAIN_PRECISIONS,
        default="auto",
        help="auto (default): bf16 autocast on a GPU, fp32 on the CPU; bf16 also on a CPU with "
        "bf16 instructions (AVX512-BF16, AMX), where pretraining is 1.3-2.2x as fast",
    )
    parser.add_argument(
        "--shard",
        default=None,
        metavar="K/N|auto",
        help="compute every N-th (seed, arm) from the K-th in the run N processes share; auto "
        "reads torchrun, srun or a SLURM array (each process on cuda:LOCAL_RANK)",
    )
    parser.add_argument("--no-report", action="store_true", help="skip the HTML report")
    parser.add_argument(
        "--output_path", "--output-path", default=None, help="parent directory (default: input's)"
    )
    parser.add_argument(
        "--force", action="store_true", help="recompute even if an identical finished run exists"
    )


@command(
    "evaluate",
    "Pretrain an SSL encoder on the curated and the random sample and compare them (step 6).",
    _evaluate_arguments,
)
def _evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from astrocurate.launch import parse_shard_spec
    from astrocurate.stages.evaluation.run import EvaluationOptions, evaluate

    options = EvaluationOptions(
        arms=tuple(args.arms),
        seeds=args.seeds,
        method=args.method,
        images_seen=args.images_seen,
        batch_size=args.batch_size,
        image_size=args.image_size,
        learning_rate=args.learning_rate,
        max_per_category=args.max_per_category,
        folds=args.folds,
        knn_k=args.knn_k,
        device=args.device,
        precision=args.precision,
    )
    run = evaluate(
        args.sampling_id,
        options,
        labels=optional_path(args.labels),
        weights=tuple(Path(w) for w in args.weights),
        output_path=optional_path(args.output_path),
        force=args.force,
        report=not args.no_report,
        shard=None if args.shard is None else parse_shard_spec(args.shard),
    )
    announce(run)
    return 0
