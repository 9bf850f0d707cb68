"""Feature extraction: speed through the pipeline vs the model alone vs a naive loop, and quality.

Speed (``--speed``), per backbone and input size, side by side in one run:

- pipeline: the stage's own loop over its resumable blocks of ``--shard-rows`` rows
  (:func:`~astrocurate.stages.feature_extraction.extraction.write_blocks`: one loader whose
  ``--workers`` threads read the memory-mapped cutouts ahead, batched preprocessing on the
  device, model, rows written into the matrix, each block synced and marked done), in
  steady state:
  images/s after the first wave of batches (one per worker). The seconds to the end of
  that wave (``start s``: the loader's ``--workers`` threads start, their batches go
  through) are printed apart, and so is the rate over the whole run, start-up included
  (``whole run``, the figure given before): a short run pays the start-up once, a run over
  millions of cutouts hardly at all. ``pipe/model`` and ``pipe/naive`` are of the steady state;
- loader: the stage's loader alone (threads read the batches into pinned memory, copied to
  the device), steady images/s: the most the pipeline can get from reading;
- prep+model: raw cutouts already on the device, prepared (normalised, resized,
  standardised) and run through the model: the most the pipeline can get on the device;
- model only: the same model on preprocessed images already in memory (the compute limit);
- naive: one cutout at a time (read, normalise, resize, forward), as a simple script would;
- ceiling: the machine's best dense fp32/bf16 matrix-multiply rate divided by the model's
  floating-point operations per image (counted by ``torch.utils.flop_counter``): roughly
  the most images/s any implementation gets, and so the most that batching can gain over
  the naive loop (``ceil/naive``). Not given for the FFT-based scattering.

With ``--precision both`` the networks (not the FFT-based scattering) run in fp32 and in bf16
autocast side by side (on the CPU, bf16 only where it has bf16 instructions: otherwise the
stage computes in fp32), and the ratios are printed; ``--vit`` adds ViT-S/14 on the CPU.
The model alone is also timed in bf16 in both memory layouts, channels-last and the
default NCHW, and the ratio printed with the layout the stage picks on this device
(channels-last for convolutions on a CPU; on a GPU the ratio says whether it should there).

With ``--kymatio`` the default backbone also runs with kymatio's own scattering transform in
place of astrocurate's (same filters, same features to float32 rounding), on the same
cutouts in the same run, and the ratio of the two is printed.

Quality (``--quality``): kNN balanced accuracy (10-NN, 5 folds) of each backbone on the
demo survey's truth classes, next to raw pixels reduced by PCA and a random-init ResNet-18,
with shuffled folds (which leak: overlapping cutouts are near-copies) and with folds by sky
patch (:func:`astrocurate.algorithms.quality.sky_patches`) side by side.

Usage::

    python benchmarks/features.py --speed --quality            # CPU, on the demo survey
    python benchmarks/features.py --speed --device cuda --synthetic 200000   # GPU
    python benchmarks/features.py --speed --kymatio --synthetic 4096 --rows 1024  # vs kymatio
    python benchmarks/features.py --speed --precision both --vit --synthetic 4096 --rows 1024
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from astrocurate.algorithms.backbones.registry import create_backbone  # noqa: E402
from astrocurate.algorithms.normalization import NormalizationConfig  # noqa: E402
from astrocurate.algorithms.precision import computed_in  # noqa: E402
from astrocurate.stages.feature_extraction.extraction import (  # noqa: E402
    FeatureModel,
    _features_of,
    cutout_loader,
    plan_batches,
    write_blocks,
)
from astrocurate.stages.feature_extraction.plan import DEFAULT_MODEL, FeatureOptions  # noqa: E402

QUALITY_MODELS = (
    "scattering",
    "scattering-j4",
    "scattering-j4-renorm",
    "scattering-j4-rot-renorm-max",
    "scattering-spatial",
)


def synthetic_store(directory: Path, n: int, size: int) -> Path:
    """Write a copied cutout store of ``n`` noise-plus-blob cutouts (no astropy, no MLflow)."""
    import pandas as pd

    from astrocurate.io.cutout_store import MANIFEST, NpyStackWriter

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    writer = NpyStackWriter(directory / "pixels.npy", size)
    yy, xx = np.mgrid[:size, :size]
    for start in range(0, n, 4096):
        m = min(4096, n - start)
        batch = rng.normal(0, 1e-4, (m, size, size)).astype(np.float32)
        cx, cy = rng.uniform(0, size, (2, m, 1, 1))
        batch += 1e-3 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 8).astype(np.float32)
        writer.append(batch)
    writer.close()
    manifest = pd.DataFrame(
        {
            "cutout_id": np.arange(n),
            "store": "copy",
            "array_file": "pixels.npy",
            "array_row": np.arange(n),
            "mosaic_path": "synthetic",
            "x0": 0,
            "y0": 0,
            "window_size": size,
            "nan_fraction": 0.0,
        }
    )
    manifest.to_parquet(directory / MANIFEST)
    return directory


def demo_store(workdir: Path) -> tuple[Path, np.ndarray, Any]:
    """Run the demo's steps; return the merge directory, truth labels and manifest."""
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{workdir / 'mlflow.db'}")
    from astrocurate.demo import run_demo
    from astrocurate.io.cutout_store import read_manifest
    from astrocurate.synthetic.survey import truth_labels_for_manifest

    runs = run_demo(workdir / "demo")
    merged = runs["merge"].output_dir
    manifest = read_manifest(merged)
    return merged, truth_labels_for_manifest(manifest), manifest


def time_pipeline(
    directory: Path,
    model: FeatureModel,
    batch_size: int,
    workers: int,
    device: torch.device,
    n_rows: int,
    shard_rows: int,
    precision: str,
) -> tuple[float, float, float]:
    """Time the stage's loop over its blocks of ``shard_rows`` rows, markers included.

    Returns
    -------
    startup : float
        Seconds to the end of the first wave, one batch per worker (one batch without
        workers): the reader threads start (each opening the store), read their first
        batch, and the wave goes through.
    steady : float
        Images/s after the first wave: the rows after it over the time after it, what a run
        over millions of cutouts sees. Batches that workers read ahead during the first
        wave are not counted in it, so a run limited by reading is not flattered.
    whole : float
        Images/s over the whole run, start-up included (the figure given before).
    """
    rows = np.arange(sum(map(len, _batches(directory, batch_size, n_rows))))
    blocks = [rows[s : s + shard_rows] for s in range(0, len(rows), shard_rows)]
    with tempfile.TemporaryDirectory() as tmp:
        matrix = Path(tmp) / "features.npy.partial"
        np.lib.format.open_memmap(
            matrix, mode="w+", dtype=np.float32, shape=(len(rows), model_dim(model))
        ).flush()
        markers = [Path(tmp) / f"{b[0]:012d}.done" for b in blocks]
        options = FeatureOptions(precision=precision)
        warm_up = _batches(directory, batch_size, 3 * batch_size)
        for _ in _features_of(directory, warm_up, model, options, 0, device):
            pass

        def written() -> Iterator[int]:
            for ids in write_blocks(
                directory, blocks, matrix, markers, model, options, batch_size, workers, device
            ):
                yield len(ids)

        return _steady_rate(written(), workers, device)


def time_loader_only(
    directory: Path, batch_size: int, workers: int, device: torch.device, n_rows: int
) -> float:
    """Steady images/s of the stage's loader alone: read, pinned, copied to the device."""
    batches = _batches(directory, batch_size, n_rows)

    def copied() -> Iterator[int]:
        for ids, raw in cutout_loader(directory, batches, workers, device):
            raw.to(device, non_blocking=True)
            yield len(ids)

    return _steady_rate(copied(), workers, device)[1]


def _batches(directory: Path, batch_size: int, n_rows: int) -> list[np.ndarray]:
    from astrocurate.io.cutout_store import read_manifest

    sizes = read_manifest(directory, ["window_size"])["window_size"].to_numpy()
    return plan_batches(sizes, np.arange(min(n_rows, len(sizes))), batch_size)


def _steady_rate(
    batch_rows: Iterator[int], workers: int, device: torch.device
) -> tuple[float, float, float]:
    """``(startup s, steady images/s, whole-run images/s)`` of a loop yielding its batches' rows.

    The start-up is the time to the end of the first wave, one batch per worker; the steady
    rate counts the rows after it (see :func:`time_pipeline`).
    """
    _sync(device)
    start = time.perf_counter()
    wave, done, rows = max(1, workers), 0, 0
    first_at, first_rows = None, 0
    for n in batch_rows:
        done, rows = done + 1, rows + n
        first_rows += n * (first_at is None)
        if done == wave:
            first_at = time.perf_counter()
    _sync(device)
    end = time.perf_counter()
    whole = rows / (end - start)
    if first_at is None or rows == first_rows:  # fewer batches than one wave
        return end - start, whole, whole
    return first_at - start, (rows - first_rows) / (end - first_at), whole


def model_dim(model: FeatureModel) -> int:
    with torch.inference_mode():
        probe = torch.zeros(1, model.size, model.size, device=model.mean.device)
        return int(model(model.prepare(probe)).shape[1])


def time_model_only(
    directory, model, batch_size, device, n_rows, precision, prepare=False, layout=None
) -> float:
    """Images/s of the model on images already on the device: prepared ones, or raw cutouts
    prepared in the loop (``prepare``: normalisation, resizing, standardisation).

    The model computes in the memory layout the stage gives it for ``precision``, or in
    ``layout`` (a ``torch.memory_format``) where given.
    """
    from astrocurate.io.cutout_store import CutoutReader

    reader = CutoutReader.from_directory(directory)
    n = min(n_rows, len(reader), 20 * batch_size)
    raw = torch.from_numpy(reader.read(np.arange(min(batch_size, n)))).to(device)
    autocast = model.computing_in(device, precision)
    if layout is not None:
        model.use_memory_format(layout)
    with torch.inference_mode():
        images = model.prepare(raw)

        def step() -> None:
            batch = model.prepare(raw) if prepare else images
            with autocast:
                model(batch)

        step()
        _sync(device)
        start = time.perf_counter()
        for _ in range(max(1, n // len(images))):
            step()
        _sync(device)
    return max(1, n // len(images)) * len(images) / (time.perf_counter() - start)


def bf16_agreement(directory: Path, model: FeatureModel, batch_size: int, device) -> float:
    """Lowest cosine similarity between a cutout's features in bf16 and in fp32 (one batch)."""
    from astrocurate.io.cutout_store import CutoutReader

    reader = CutoutReader.from_directory(directory)
    raw = torch.from_numpy(reader.read(np.arange(min(batch_size, len(reader))))).to(device)
    with torch.inference_mode():
        images = model.prepare(raw)
        with model.computing_in(device, "fp32"):
            fp32 = model(images).float()
        with model.computing_in(device, "bf16"):
            bf16 = model(images).float()
    return float(torch.nn.functional.cosine_similarity(fp32, bf16).min())


def time_naive(directory, model, device, n: int) -> float:
    """Images/s of a per-image loop: read, normalise, resize and forward one cutout at a time
    (in float32 and the default layout, as a simple script would)."""
    from astrocurate.io.cutout_store import CutoutReader

    reader = CutoutReader.from_directory(directory)
    start = time.perf_counter()
    with torch.no_grad(), model.computing_in(device, "fp32"):
        for i in range(min(n, len(reader))):
            image = torch.from_numpy(reader[i])[None].to(device)
            model(model.prepare(image)).cpu()
    _sync(device)
    return min(n, len(reader)) / (time.perf_counter() - start)


def gemm_flops_per_second(device: torch.device, seconds: float = 0.5) -> float:
    """Best sustained dense matrix-multiply rate over a few sizes (fp32 CPU, bf16 CUDA)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    best = 0.0
    for n in (512, 1024, 2048, 4096):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        a @ b
        _sync(device)
        repeats, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            a @ b
            _sync(device)
            repeats += 1
        best = max(best, 2 * n**3 * repeats / elapsed)
    return best


def model_flops_per_image(model: FeatureModel, device: torch.device) -> float:
    """Floating-point operations of one forward pass on one prepared image."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode():
        image = model.prepare(torch.zeros(1, model.size, model.size, device=device))
        counter = FlopCounterMode(display=False)
        with counter:
            model(image)
    return float(counter.get_total_flops())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def build(
    name: str, size: int, device: torch.device, pretrained: bool = True, kymatio: bool = False
) -> FeatureModel:
    """Make the feature model; ``kymatio``: a scattering backbone on kymatio's transform."""
    kwargs = {} if name.startswith("scattering") else {"pretrained": pretrained}
    backbone = create_backbone(name, input_size=size, **kwargs)
    if kymatio:
        from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D

        spec = backbone.module.spec
        backbone.module.transform = ScatteringTorch2D(J=spec.J, shape=(size, size), L=spec.L)
    return FeatureModel(backbone, size, NormalizationConfig()).to(device).eval()


def speed(args, directory: Path, device: torch.device) -> None:
    cases = [(DEFAULT_MODEL, 64, False)]
    if args.kymatio:
        cases.append((DEFAULT_MODEL, 64, True))
    if not args.default_only:
        cases += [("timm:resnet18", 64, False), ("timm:resnet18", 128, False)]
    if (device.type == "cuda" or args.vit) and not args.default_only:
        cases.append(("timm:vit_small_patch14_reg4_dinov2", 126, False))
    both = args.precision == "both"
    precisions = ["fp32", "bf16"] if both else [computed_in(device, args.precision)]
    print(f"\nspeed on {device} ({torch.get_num_threads()} threads), batch {args.batch_size}")
    gemm = gemm_flops_per_second(device)
    print(f"dense matrix multiply: {gemm / 1e9:.0f} GFLOP/s")
    print(
        f"{'model':<40}{'size':>5}{'pipeline':>10}{'start s':>9}{'whole run':>11}"
        f"{'loader':>9}{'prep+model':>12}"
        f"{'model only':>12}{'naive':>9}{'pipe/model':>11}{'pipe/naive':>11}"
        f"{'GFLOP/img':>10}{'ceiling':>9}{'ceil/naive':>11}"
    )
    rates = {}
    runs = [  # the FFT-based scattering once, in fp32: its FFTs do not autocast
        (case, precision)
        for case in cases
        for precision in (["fp32"] if case[0].startswith("scattering") else precisions)
    ]
    for (name, size, kymatio), precision in runs:
        model = build(name, size, device, pretrained=False, kymatio=kymatio)
        startup, pipeline, whole = time_pipeline(
            directory,
            model,
            args.batch_size,
            args.workers,
            device,
            args.rows,
            args.shard_rows,
            precision,
        )
        loader = time_loader_only(directory, args.batch_size, args.workers, device, args.rows)
        timed = (directory, model, args.batch_size, device, args.rows, precision)
        prepared = time_model_only(*timed, prepare=True)
        alone = time_model_only(*timed)
        naive = time_naive(directory, model, device, args.naive_rows)
        # FFT-based scattering: torch's counter sees no FFT FLOPs, so no ceiling is given
        flops = 0.0 if name.startswith("scattering") else model_flops_per_image(model, device)
        ceiling = f"{'n/a':>10}{'n/a':>9}{'n/a':>11}"
        if flops:
            ceiling = f"{flops / 1e9:>10.3f}{gemm / flops:>9.0f}{gemm / flops / naive:>11.1f}"
        label = f"{name} (kymatio)" if kymatio else name
        rates[label, size, precision] = pipeline, alone
        label += f" {precision}" * (len(precisions) > 1)
        print(
            f"{label:<40}{size:>5}{pipeline:>10.0f}{startup:>9.2f}{whole:>11.0f}"
            f"{loader:>9.0f}{prepared:>12.0f}{alone:>12.0f}{naive:>9.0f}"
            f"{pipeline / alone:>11.2f}{pipeline / naive:>11.1f}{ceiling}"
        )
    for name, size, _ in cases if len(precisions) > 1 else ():
        if not name.startswith("scattering"):
            (pipe, alone), (old_pipe, old_alone) = (
                rates[name, size, "bf16"],
                rates[name, size, "fp32"],
            )
            model = build(name, size, device, pretrained=False)
            cosine = bf16_agreement(directory, model, args.batch_size, device)
            print(
                f"{name} {size} px, bf16 / fp32: pipeline {pipe / old_pipe:.2f}x, "
                f"model only {alone / old_alone:.2f}x; lowest cosine of a cutout's two "
                f"feature vectors {cosine:.6f}"
            )
    for name, size, _ in cases if "bf16" in precisions else ():
        if not name.startswith("scattering"):
            print_layouts(args, directory, device, name, size)
    if args.kymatio:
        (pipe, alone), (old_pipe, old_alone) = (
            rates[DEFAULT_MODEL, 64, "fp32"],
            rates[f"{DEFAULT_MODEL} (kymatio)", 64, "fp32"],
        )
        print(
            f"{DEFAULT_MODEL}, astrocurate's transform / kymatio's: "
            f"pipeline {pipe / old_pipe:.2f}x, model only {alone / old_alone:.2f}x"
        )


def print_layouts(args, directory: Path, device: torch.device, name: str, size: int) -> None:
    """Print the bf16 model alone in channels-last against NCHW, and the stage's choice."""
    model = build(name, size, device, pretrained=False)
    timed = (directory, model, args.batch_size, device, args.rows, "bf16")
    model.computing_in(device, "bf16")
    stage = "channels-last" if model.memory_format == torch.channels_last else "NCHW"
    last = time_model_only(*timed, layout=torch.channels_last)
    nchw = time_model_only(*timed, layout=torch.contiguous_format)
    print(
        f"{name} {size} px, bf16 model only, channels-last / NCHW: {last / nchw:.2f}x "
        f"(the stage computes in {stage} here)"
    )


def features_of(directory: Path, model: FeatureModel, device: torch.device) -> np.ndarray:
    from astrocurate.io.cutout_store import read_manifest

    sizes = read_manifest(directory, ["window_size"])["window_size"].to_numpy()
    batches = plan_batches(sizes, np.arange(len(sizes)), 128)
    out = np.zeros((len(sizes), model_dim(model)), dtype=np.float32)
    for ids, feats in _features_of(directory, batches, model, FeatureOptions(), 0, device):
        out[ids] = feats
    return out


def raw_pixels(directory: Path, size: int) -> np.ndarray:
    """Normalised cutouts resized to ``size`` and flattened: the no-model baseline."""
    import torch.nn.functional as F  # noqa: N812

    from astrocurate.algorithms.normalization import normalize
    from astrocurate.io.cutout_store import CutoutReader

    reader = CutoutReader.from_directory(directory)
    out = []
    for i in range(len(reader)):
        image = normalize(torch.from_numpy(reader[i])[None], NormalizationConfig())[None]
        out.append(F.interpolate(image, size=(size, size), mode="bilinear", antialias=True))
    return torch.cat(out).reshape(len(reader), -1).numpy()


def quality(directory: Path, labels: np.ndarray, manifest: Any, device: torch.device) -> None:
    """kNN balanced accuracy of every backbone, with shuffled folds and with sky-patch folds.

    Shuffled folds put overlapping cutouts (near-copies) on both sides of a split; the
    sky-patch folds never split a patch. Both are printed side by side.
    """
    from sklearn.decomposition import PCA

    from astrocurate.algorithms.quality import knn_balanced_accuracy, manifest_sky_patches

    classes, counts = np.unique(labels, return_counts=True)
    print(
        "\nkNN balanced accuracy on the demo survey's classes "
        f"({', '.join(f'{c} {n}' for c, n in zip(classes, counts, strict=True))}; "
        f"chance {1 / len(classes):.2f})"
    )
    candidates = [(name, lambda n=name: build(n, 64, device)) for name in QUALITY_MODELS]
    candidates.append(
        (
            "random-init timm:resnet18 (64 px)",
            lambda: build("timm:resnet18", 64, device, pretrained=False),
        )
    )
    rows = []
    for name, make in candidates:
        start = time.perf_counter()
        feats = features_of(directory, make(), device)
        rows.append((name, feats, time.perf_counter() - start))
    pixels = raw_pixels(directory, 32)
    rows.append(("raw pixels (32 px) + PCA 64", PCA(64, random_state=0).fit_transform(pixels), 0.0))
    sides = (2, 4, 8)  # patch side in largest windows; 4 is the metric's
    by_side = {side: manifest_sky_patches(manifest, side) for side in sides}
    print(
        "sky patches of 2 / 4 / 8 largest windows: "
        + " / ".join(str(len(np.unique(by_side[side]))) for side in sides)
    )
    header = "".join(f"{f'patches of {side}':>13}" for side in sides)
    print(f"{'features':<40}{'dim':>6}{'shuffled folds':>16}{header}{'seconds':>9}")
    for name, feats, seconds in rows:
        leaky = knn_balanced_accuracy(feats, labels)
        grouped = "".join(
            f"{knn_balanced_accuracy(feats, labels, groups=by_side[side]):>13.3f}" for side in sides
        )
        print(f"{name:<40}{feats.shape[1]:>6}{leaky:>16.3f}{grouped}{seconds:>9.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speed", action="store_true")
    parser.add_argument(
        "--kymatio", action="store_true", help="also time the default on kymatio's transform"
    )
    parser.add_argument("--default-only", action="store_true", help="time the default only")
    parser.add_argument("--quality", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    parser.add_argument("--synthetic", type=int, default=0, help="use N synthetic 64-px cutouts")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--rows", type=int, default=4096, help="cutouts timed per case")
    parser.add_argument(
        "--shard-rows",
        type=int,
        default=FeatureOptions.shard_rows,
        help="rows per resumable block (default: the stage's)",
    )
    parser.add_argument("--naive-rows", type=int, default=200)
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "both"],
        default="auto",
        help="auto: bf16 on CUDA, fp32 on the CPU; both: fp32 and bf16 side by side",
    )
    parser.add_argument("--vit", action="store_true", help="time ViT-S/14 on the CPU too")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="astrocurate-features-"))
    print(
        f"torch {torch.__version__}, device {device}"
        + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else "")
    )
    if args.synthetic:
        directory, labels, manifest = (
            synthetic_store(workdir / "store", args.synthetic, 64),
            None,
            None,
        )
    else:
        directory, labels, manifest = demo_store(workdir)
    if args.speed:
        speed(args, directory, device)
    if args.quality and labels is not None:
        quality(directory, labels, manifest, device)


if __name__ == "__main__":
    main()
