"""Does curation pay? Curated vs random pretraining on a synthetic survey with truth.

Runs the real pipeline in a work directory with its own MLflow store: a synthetic survey
(``--mosaics`` mosaics of ``--mosaic-size`` px, with its truth catalogue), cutouts of
``--window-size`` px, the merge, the default features, the clustering ``--config``, a
curated sample of ``--num-samples`` with its random baseline of the same size, then step 6
(``evaluate``) with ``--seeds`` seeds and a budget of ``--images-seen`` images per arm and
seed. It prints, side by side from this one run, per arm: the balanced accuracy of the kNN
and the linear probe and the recall of the rarest class (mean and spread over seeds), the
pretraining time per arm and seed and its images/s, and the verdict (curated ahead when
both differences exceed the sum of the spreads). The figures also go to
``<workdir>/evaluation_benchmark.json``.

Usage::

    python benchmarks/evaluation.py                         # 8 x 2048 px, 3000 cutouts, 3 seeds
    python benchmarks/evaluation.py --images-seen 30000 --device cuda
    python benchmarks/evaluation.py --outliers exclude --outlier-share 0.035   # quality curation
    python benchmarks/evaluation.py --mosaics 2 --mosaic-size 1024 --num-samples 300 \\
        --images-seen 600 --seeds 2                         # a quick look
    python benchmarks/evaluation.py --throughput --device cuda   # pretraining images/s only
    python benchmarks/evaluation.py --throughput --device cpu --precision both  # fp32 vs bf16

``--throughput`` times pretraining alone on random images (SimCLR and BYOL, 64 and 128 px):
``pretrain`` (augmentations, two views, loss, optimiser) side by side with the bare
training step of the same networks on ready-made views, so the ratio is the share of the
time the augmentations and the loop cost. In bf16 the bare step is timed in both memory
layouts, channels-last and the default NCHW, and the ratio printed with the one pretraining
picks on this device (channels-last for bf16 convolutions on a CPU; on a GPU the ratio says
whether it should there). Then the host's time per step for what it once
did every step: a permutation of ``--order-images`` images (now one per epoch), and the
noise of two views drawn on the host (now on the device, off the CPU).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary one")
    parser.add_argument("--mosaics", type=int, default=8)
    parser.add_argument("--mosaic-size", type=int, default=2048)
    parser.add_argument("--window-size", type=int, default=64)
    parser.add_argument("--config", default="demo_3lvl_100_20_5.yaml", help="clustering config")
    parser.add_argument("--num-samples", type=int, default=3000)
    parser.add_argument(
        "--outliers",
        choices=["none", "exclude"],
        default="none",
        help="leave the isolation forest's top --outlier-share out of the curated sample",
    )
    parser.add_argument("--outlier-share", type=float, default=0.01)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--images-seen", type=int, default=9000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--method", choices=["simclr", "byol"], default="simclr")
    parser.add_argument("--max-per-category", type=int, default=200)
    parser.add_argument("--arms", nargs="+", default=["curated", "random"])
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "both"],
        default="auto",
        help="auto: bf16 on CUDA, fp32 on the CPU; both (--throughput): fp32 and bf16 side by side",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--throughput", action="store_true", help="time pretraining only")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (--throughput)")
    parser.add_argument(
        "--order-images",
        type=int,
        default=1_000_000,
        help="images whose order a step picks its batch from, for the host costs (--throughput)",
    )
    args = parser.parse_args()
    if args.order_images < 1:
        parser.error(f"--order-images: expected a whole number >= 1, got {args.order_images}")
    if not 0 < args.outlier_share <= 0.5:
        parser.error(f"--outlier-share: expected a share in (0, 0.5], got {args.outlier_share}")
    if args.precision == "both" and not args.throughput:
        parser.error("--precision both: only with --throughput (one evaluation, one precision)")
    return args


def _throughput(args: argparse.Namespace) -> None:
    """Print pretraining images/s: ``pretrain`` against the bare step on ready-made views."""
    import torch

    from astrocurate.algorithms.kmeans.rows import resolve_device
    from astrocurate.algorithms.precision import autocast, channels_last_pays, computed_in
    from astrocurate.algorithms.ssl import AugmentConfig, PretrainConfig, pretrain, robust_rms
    from astrocurate.algorithms.ssl.training import _BYOL, _SimCLR

    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU x{os.cpu_count()}"
    print(f"pretraining throughput on {name}, batch {args.batch_size}, {args.steps} steps")
    print(
        f"{'method':<8} {'size':>5} {'precision':>10} {'pretrain img/s':>15} "
        f"{'bare step img/s':>16} {'ratio':>6}"
    )
    wanted = ["fp32", "bf16"] if args.precision == "both" else [args.precision]
    rates, layouts = {}, {}
    for method, size, asked in itertools.product(("simclr", "byol"), (64, 128), wanted):
        images = torch.randn(args.batch_size * 4, size, size) * 1e-4
        config = PretrainConfig(
            method=method,
            images_seen=args.batch_size * args.steps,
            batch_size=args.batch_size,
            augment=AugmentConfig(image_size=size),
            precision=asked,
        )
        warm = PretrainConfig(**{**config.__dict__, "images_seen": args.batch_size * 2})
        pretrain(images, robust_rms(images), warm, device=device)
        _sync(device)
        started = time.perf_counter()
        pretrain(images, robust_rms(images), config, device=device)
        _sync(device)
        full = args.batch_size * args.steps / (time.perf_counter() - started)
        model = (_SimCLR if method == "simclr" else _BYOL)(config).to(device)
        context = autocast(device, asked)
        stage = channels_last_pays(device, asked, model)  # the layout pretrain() picks
        if stage:
            model.to(memory_format=torch.channels_last)
        bare = _bare_steps(model, args.batch_size, size, args.steps, device, context)
        if computed_in(device, asked) == "bf16":  # the other layout beside it
            model.to(memory_format=torch.contiguous_format if stage else torch.channels_last)
            other = _bare_steps(model, args.batch_size, size, args.steps, device, context)
            last, nchw = (bare, other) if stage else (other, bare)
            layouts[method, size] = last / nchw, "channels-last" if stage else "NCHW"
        used = computed_in(device, asked)
        rates[method, size, asked] = full, bare
        print(f"{method:<8} {size:>5} {used:>10} {full:>15.0f} {bare:>16.0f} {full / bare:>6.2f}")
    for (method, size), (ratio, stage) in layouts.items():
        print(
            f"{method} {size} px, bf16 bare step, channels-last / NCHW: {ratio:.2f}x "
            f"(pretraining computes in {stage} here)"
        )
    for method, size in itertools.product(("simclr", "byol"), (64, 128)) if len(wanted) > 1 else ():
        (full, bare), (old_full, old_bare) = (
            rates[method, size, "bf16"],
            rates[method, size, "fp32"],
        )
        print(
            f"{method} {size} px, bf16 / fp32: pretrain {full / old_full:.2f}x, "
            f"bare step {bare / old_bare:.2f}x"
        )
    _host_costs(args.batch_size, args.order_images, device)


def _host_costs(batch: int, n: int, device) -> None:
    """Print the host's own time per training step for what it used to do every step.

    The batch's images: a permutation of ``n`` drawn every step (before) against once per
    epoch (``_EpochOrders``); the noise of two views of ``batch`` images at 128 px: drawn
    on the host and copied over (before) against drawn on the device (off the CPU).
    """
    import torch

    from astrocurate.algorithms.ssl.augment import _noise
    from astrocurate.algorithms.ssl.training import _EpochOrders

    steps, per_epoch = 20, max(1, n // batch)
    started = time.perf_counter()
    for step in range(steps):
        epoch, position = divmod(step, per_epoch)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch))
        order[(position * batch + torch.arange(batch)) % n]
    per_step = (time.perf_counter() - started) / steps
    orders = _EpochOrders(0, n)
    orders.batch(0, batch, per_epoch)  # the epoch's draw, once
    started = time.perf_counter()
    for step in range(1, steps + 1):
        orders.batch(step, batch, per_epoch)
    cached = (time.perf_counter() - started) / steps
    print(
        f"host, batch of {n:,} images: {per_step * 1e3:.2f} ms per step with a permutation "
        f"per step, {cached * 1e3:.3f} ms with one per epoch ({per_step / cached:.0f}x)"
    )
    size = (batch, 1, 128, 128)
    timings = {}
    for where, target in (("host", torch.device("cpu")), ("device", device)):
        generator = torch.Generator().manual_seed(0)
        _sync(device)
        started = time.perf_counter()
        for _ in range(2 * steps):
            _noise(size, target, generator).to(device, non_blocking=True)
        timings[where] = (time.perf_counter() - started) / steps  # host time, two views
    print(
        f"host, noise of two views of {batch} at 128 px: {timings['host'] * 1e3:.1f} ms per step "
        f"drawn on the host, {timings['device'] * 1e3:.1f} ms drawn on {device.type}"
    )


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _bare_steps(model, batch: int, size: int, steps: int, device, autocast) -> float:
    """Images/s of forward, backward and AdamW on two fixed views (the model alone)."""
    import torch

    views = [torch.randn(batch, 1, size, size, device=device) for _ in range(2)]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    for step in range(steps + 2):
        if step == 2:
            _sync(device)
            started = time.perf_counter()
        with autocast:
            a, b = model(views[0]), model(views[1])
            if hasattr(model, "target"):  # BYOL's momentum branch
                model.target(views[0]), model.target(views[1])
        loss = -(
            torch.nn.functional.normalize(a.float()) * torch.nn.functional.normalize(b.float())
        ).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    _sync(device)
    return batch * steps / (time.perf_counter() - started)


def survey_clustering(args: argparse.Namespace, work: Path) -> tuple[str, dict[str, float]]:
    """Run steps 1 to 4 (reused when ``work`` holds them); return the clustering run ID and
    the seconds of each part. ``args``: mosaics, mosaic_size, window_size, config, device;
    optional noise_edge_factor (of the survey) and find_sources (PyBDSF's rms maps and
    source lists for the cutouts, ``astrocurate find-sources``).
    """
    from astrocurate.stages.clustering.run import load_config, prepare_clustering, run_clustering
    from astrocurate.stages.cutting_out.run import CutoutOptions, make_cutouts
    from astrocurate.stages.feature_extraction.run import extract_features
    from astrocurate.stages.merge_cutouts.run import merge_cutouts
    from astrocurate.synthetic.survey import existing_or_new_survey

    seconds: dict[str, float] = {}
    started = time.perf_counter()
    edge = getattr(args, "noise_edge_factor", 1.0)
    survey = existing_or_new_survey(  # a rerun with other options reuses steps 1 to 4
        work / "survey",
        n_mosaics=args.mosaics,
        mosaic_size=args.mosaic_size,
        seed=0,
        **({"noise_edge_factor": edge} if edge != 1.0 else {}),
    )
    options = CutoutOptions(args.window_size)
    if getattr(args, "find_sources", False):
        from astrocurate.stages.source_finding.run import SourceFindingOptions, find_sources

        found = find_sources(survey, SourceFindingOptions(), work / "outputs")
        options = CutoutOptions(args.window_size, sources_id=found.run_id)
        seconds["source finding"] = time.perf_counter() - started
    cutouts = make_cutouts(survey, work / "outputs", options)
    merged = merge_cutouts([cutouts.run_id])
    seconds["survey, cutouts, merge"] = time.perf_counter() - started
    started = time.perf_counter()
    features = extract_features(merged.run_id, device=args.device)
    seconds["features"] = time.perf_counter() - started
    started = time.perf_counter()
    prepared = prepare_clustering(features.run_id, load_config(args.config))
    run_clustering(prepared.directory)
    seconds["clustering"] = time.perf_counter() - started
    return prepared.run_id, seconds


def _pipeline(args: argparse.Namespace, work: Path) -> tuple[str, dict[str, float]]:
    """Run steps 1 to 5; return the sampling run ID and the seconds of each step."""
    from astrocurate.stages.curated_sampling.run import SamplingOptions, curated_sample

    clustering_id, seconds = survey_clustering(args, work)
    started = time.perf_counter()
    options = SamplingOptions(
        args.num_samples, outliers=args.outliers, outlier_share=args.outlier_share
    )
    sample = curated_sample(clustering_id, options, report=False)
    seconds["sampling"] = time.perf_counter() - started
    return sample.run_id, seconds


def _table(metrics: dict[str, float], info: dict, timings: dict[str, list[dict]]) -> str:
    rarest = info["labels"]["rarest"]
    lines = [
        f"labelled cutouts: {info['labels']['cutouts']} {info['labels']['categories']}; "
        f"rarest class: {rarest}",
        f"{'arm':<10} {'kNN bal. acc.':>15} {'linear bal. acc.':>17} "
        f"{'kNN recall ' + rarest:>20} {'linear recall ' + rarest:>23} {'s/seed':>8} {'img/s':>7}",
    ]
    for arm in info["arms"]:
        cells = []
        for key in (
            "knn_balanced_accuracy",
            "linear_balanced_accuracy",
            "knn_rarest_recall",
            "linear_rarest_recall",
        ):
            mean, std = metrics.get(f"{arm}_{key}_mean"), metrics.get(f"{arm}_{key}_std")
            cells.append("-" if mean is None else f"{mean:.3f} +- {std:.3f}")
        runs = timings.get(arm, [])
        per_seed = sum(t["seconds"] for t in runs) / len(runs) if runs else float("nan")
        rate = sum(t["images_per_second"] for t in runs) / len(runs) if runs else float("nan")
        lines.append(
            f"{arm:<10} {cells[0]:>15} {cells[1]:>17} {cells[2]:>20} {cells[3]:>23} "
            f"{per_seed:>8.0f} {rate:>7.0f}"
        )
    for probe in ("knn", "linear"):
        if f"curated_ahead_{probe}" in metrics:
            verdict = "AHEAD" if metrics[f"curated_ahead_{probe}"] else "not clearly ahead"
            lines.append(
                f"{probe}: curated - random = "
                f"{metrics[f'curated_minus_random_{probe}_balanced_accuracy']:+.3f} balanced "
                f"accuracy, {metrics[f'curated_minus_random_{probe}_rarest_recall']:+.3f} "
                f"rarest recall: {verdict}"
            )
    return "\n".join(lines)


def main() -> None:
    """Run the benchmark and print its table."""
    args = _arguments()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.throughput:
        _throughput(args)
        return
    work = (args.workdir or Path(tempfile.mkdtemp(prefix="astrocurate-eval-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    os.environ.setdefault("ASTROCURATE_DATA_DIR", str(work / "outputs"))
    os.chdir(work)
    import torch

    from astrocurate.stages.evaluation.outputs import INFO, METRICS
    from astrocurate.stages.evaluation.run import EvaluationOptions, evaluate

    sampling_id, seconds = _pipeline(args, work)
    options = EvaluationOptions(
        arms=tuple(args.arms),
        seeds=args.seeds,
        method=args.method,
        images_seen=args.images_seen,
        batch_size=args.batch_size,
        max_per_category=args.max_per_category,
        device=args.device,
        precision=args.precision,
    )
    started = time.perf_counter()
    run = evaluate(sampling_id, options)
    seconds["evaluation"] = time.perf_counter() - started
    metrics = json.loads((run.output_dir / METRICS).read_text())
    info = json.loads((run.output_dir / INFO).read_text())
    timings = {
        arm: [
            json.loads(p.read_text())
            for p in sorted(run.output_dir.glob(f"arms/{arm}/*/timing.json"))
        ]
        for arm in info["arms"]
    }
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU x{os.cpu_count()}"
    print(f"astrocurate evaluation benchmark on {device}, {time.strftime('%Y-%m-%d')}")
    print(
        f"survey {args.mosaics} x {args.mosaic_size} px, windows {args.window_size} px, sample "
        f"{args.num_samples}, {args.method} ResNet-18, {args.images_seen} images seen per arm "
        f"and seed, {args.seeds} seeds"
        + (f", outliers excluded (top {args.outlier_share:g})" if args.outliers != "none" else "")
    )
    print(", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
    print(_table(metrics, info, timings))
    print(f"evaluation run {run.run_id}: {run.output_dir}")
    result = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "device": device,
        "seconds": seconds,
        "metrics": metrics,
        "timings": timings,
        "info": info,
    }
    (work / "evaluation_benchmark.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
