"""The sampling report (issue #6): a self-contained HTML page over a curated sampling run.

The report is written for a real ``curated_sampling`` run over the session's small pipeline
(tests/curation_pipeline.py: cutouts of 32 and 64 px, stand-in features, a 2-level
clustering over 85 % of the rows) and checked as files, as HTML, and as rendered by
headless Chromium.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from astrocurate.errors import InvalidArgumentError, InvalidRunError
from astrocurate.stages.curated_sampling.report import write_report
from astrocurate.stages.curated_sampling.report_data import load_sampling_run
from astrocurate.stages.curated_sampling.report_galleries import (
    asinh_stretch,
    gallery_clusters,
    pick_gallery_rows,
    thumbnail_png,
)
from astrocurate.stages.curated_sampling.report_map import feature_map
from needs import unavailable

CHROMIUM = Path("/usr/bin/chromium")
APT_LINE = "apt-get install -y --no-install-recommends chromium"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DATA_URI = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
NUM_SAMPLES = 60
FIGURES = (
    "balance_level_2.png",
    "balance_classes.png",
    "feature_map.png",
    "cluster_sizes_level_1.png",
    "cluster_sizes_level_2.png",
)


# ----------------------------------------------------------------------------- fixture


@pytest.fixture(scope="module")
def sampling_dir(curation_pipeline) -> Path:
    """A real sampling run (no report) over the session's small pipeline."""
    from astrocurate.stages.curated_sampling.run import SamplingOptions, curated_sample

    options = SamplingOptions(NUM_SAMPLES, seed=7)
    run = curated_sample(curation_pipeline.clustering_id, options, report=False, force=True)
    return run.output_dir


@pytest.fixture(scope="module")
def report(sampling_dir: Path) -> Path:
    """The report written with small gallery and map settings."""
    return write_report(sampling_dir, max_points=300, gallery_size=8, projection="pca")


@pytest.fixture
def copy_of(sampling_dir: Path, tmp_path: Path):
    """Copy the sampling directory's own (small) files, to alter them in one test."""

    def make() -> Path:
        target = tmp_path / "sampling"
        target.mkdir()
        for name in (
            "sampling.json",
            "selected.npy",
            "baseline_random.npy",
            "curated.parquet",
            "metrics.json",
        ):
            shutil.copy(sampling_dir / name, target / name)
        return target

    return make


def _images(page: str) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(b))) for b in DATA_URI.findall(page)]


# ----------------------------------------------------------------------------- files and HTML


def test_report_writes_page_and_figures_atomically(sampling_dir: Path, report: Path) -> None:
    assert report == sampling_dir / "report" / "index.html"
    names = sorted(p.name for p in report.parent.iterdir())
    assert names == sorted([*FIGURES, "index.html"])
    assert not [p for p in sampling_dir.iterdir() if p.name.startswith((".report", ".tmp"))]
    for name in FIGURES:
        data = (report.parent / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE), name
        width, height = Image.open(io.BytesIO(data)).size
        assert width >= 600 and height >= 300, name
    total = sum(p.stat().st_size for p in report.parent.iterdir())
    assert total < 3_000_000


def test_page_is_self_contained(report: Path) -> None:
    page = report.read_text()
    sources = re.findall(r'<img[^>]*\ssrc="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "<link" not in page
    for image in _images(page):
        image.load()  # raises on a corrupt PNG
    figures = {Path(p).name for p in re.findall(r'href="([^"]+\.png)"', page)}
    assert figures == set(FIGURES)


def test_header_shows_parameters_and_metrics(sampling_dir: Path, report: Path) -> None:
    page = report.read_text()
    metrics = json.loads((sampling_dir / "metrics.json").read_text())
    params = json.loads((sampling_dir / "sampling.json").read_text())
    for key in ("num_samples", "strategy", "seed", "clustering_run_id"):
        assert f"<td>{key}</td><td>{params[key]}</td>" in page
    for name in ("pool", "random", "curated"):
        assert f"{metrics[f'level_2_entropy_{name}']:.3f}" in page
        assert f"{metrics[f'class_entropy_{name}']:.3f}" in page
    assert f"{params['pool_size']:,}" in page and f"<td>{NUM_SAMPLES:,}</td>" in page


def test_galleries_show_largest_and_smallest_clusters_and_mark_curated(
    sampling_dir: Path, report: Path
) -> None:
    run = load_sampling_run(sampling_dir)
    top = np.asarray(run.point_labels[1])
    pool = np.bincount(top[top >= 0], minlength=run.n_clusters[1])
    page = report.read_text()
    heads = re.findall(
        r"<h3>(largest|smallest) #(\d+): level-2 cluster (\d+) — ([\d,]+) pool points, "
        r"([\d,]+) curated</h3>",
        page,
    )
    assert heads, "no gallery headings"
    order = np.lexsort((np.arange(len(pool)), -pool))
    order = order[pool[order] > 0]
    expected = [int(c) for c in order[:3]] + [int(c) for c in order[3:][::-1][:3]]
    assert [int(h[2]) for h in heads] == expected
    selected = set(run.selected.tolist())
    thumbs = re.findall(
        r'<figure class="(thumb(?: curated)?)"><img src="data:image/png;base64,([^"]+)" '
        r'alt="cutout (\d+)[^"]*" title="#\d+ · (\d+)px',
        page,
    )
    assert len(thumbs) == sum(min(8, pool[int(h[2])]) for h in heads)
    assert any(css == "thumb curated" for css, *_ in thumbs)
    assert any(css == "thumb" for css, *_ in thumbs)
    sizes = set()
    for css, data, cutout, window in thumbs:
        assert (css == "thumb curated") == (int(cutout) in selected)
        assert top[int(cutout)] in {int(h[2]) for h in heads}
        image = Image.open(io.BytesIO(base64.b64decode(data)))
        assert image.size == (int(window), int(window)) and image.mode == "L"
        sizes.add(int(window))
    for _kind, _, cluster, n_pool, n_curated in heads:
        assert int(n_pool.replace(",", "")) == pool[int(cluster)]
        assert int(n_curated.replace(",", "")) == int(
            np.isin(np.flatnonzero(top == int(cluster)), run.selected).sum()
        )
    assert sizes <= {32, 64}


def test_report_is_reproducible_and_replaced_in_place(sampling_dir: Path, report: Path) -> None:
    first = report.read_bytes()
    again = write_report(sampling_dir, max_points=300, gallery_size=8, projection="pca")
    assert again == report and again.read_bytes() == first
    assert not [p for p in sampling_dir.iterdir() if p.name.startswith((".report", ".tmp"))]
    other = write_report(
        sampling_dir, max_points=300, gallery_size=8, projection="pca", random_state=5
    )
    assert other.read_bytes() != first
    write_report(sampling_dir, max_points=300, gallery_size=8, projection="pca")  # restore


def test_entropies_come_from_metrics_json(copy_of) -> None:
    directory = copy_of()
    metrics = json.loads((directory / "metrics.json").read_text())
    metrics["level_2_entropy_curated"] = 0.123456
    metrics["class_entropy_random"] = 0.654321
    (directory / "metrics.json").write_text(json.dumps(metrics))
    page = write_report(directory, max_points=100, gallery_size=2, projection="pca").read_text()
    assert "0.123" in page and "0.654" in page


def test_without_truth_classes_there_is_no_class_histogram(copy_of) -> None:
    directory = copy_of()
    metrics = json.loads((directory / "metrics.json").read_text())
    metrics = {k: v for k, v in metrics.items() if not k.startswith("class_")}
    (directory / "metrics.json").write_text(json.dumps(metrics))
    curated = pd.read_parquet(directory / "curated.parquet").drop(columns="truth_class")
    curated.to_parquet(directory / "curated.parquet")
    path = write_report(directory, max_points=100, gallery_size=2, projection="pca")
    assert not (path.parent / "balance_classes.png").exists()
    assert "Truth classes" not in path.read_text()
    assert (path.parent / "balance_level_2.png").is_file()


def test_class_shares_are_computed_when_metrics_lack_them(sampling_dir: Path, copy_of) -> None:
    directory = copy_of()
    metrics = json.loads((directory / "metrics.json").read_text())
    logged = {k: v for k, v in metrics.items() if k.startswith("class_entropy_")}
    metrics = {k: v for k, v in metrics.items() if not k.startswith("class_")}
    (directory / "metrics.json").write_text(json.dumps(metrics))
    page = write_report(directory, max_points=100, gallery_size=2, projection="pca").read_text()
    assert (directory / "report" / "balance_classes.png").is_file()
    for name in ("pool", "random", "curated"):
        assert f"{logged[f'class_entropy_{name}']:.3f}" in page


def test_feature_map_subsamples_to_max_points(sampling_dir: Path) -> None:
    run = load_sampling_run(sampling_dir)
    rng = np.random.default_rng(0)
    small = feature_map(run, max_points=40, projection="pca", rng=rng)
    assert small.pool_xy.shape == (40, 2) and small.curated_xy.shape == (10, 2)
    assert small.method == "PCA" and np.isfinite(small.pool_xy).all()
    assert set(small.pool_labels.tolist()) <= set(range(run.n_clusters[1]))
    full = feature_map(run, max_points=10**6, projection="pca", rng=rng)
    assert len(full.pool_xy) == run.n_pool and len(full.curated_xy) == len(run.selected)
    assert full.explained is not None and full.explained[0] >= full.explained[1] > 0


# ----------------------------------------------------------------------------- errors


def test_write_report_rejects_bad_arguments(sampling_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="max_points"):
        write_report(sampling_dir, max_points=0)
    with pytest.raises(InvalidArgumentError, match="gallery_size"):
        write_report(sampling_dir, gallery_size=-1)
    with pytest.raises(InvalidArgumentError, match="projection"):
        write_report(sampling_dir, projection="tsne")
    with pytest.raises(InvalidRunError, match=r"sampling\.json"):
        write_report(tmp_path)


def test_umap_without_the_package_is_refused(sampling_dir: Path, monkeypatch) -> None:
    import astrocurate.stages.curated_sampling.report_map as report_map

    monkeypatch.setattr(report_map, "_umap_available", lambda: False)
    with pytest.raises(InvalidArgumentError, match="umap-learn"):
        write_report(sampling_dir, projection="umap")


def test_samples_outside_the_pool_are_refused(copy_of) -> None:
    directory = copy_of()
    run = load_sampling_run(directory)
    outside = np.flatnonzero(np.asarray(run.point_labels[0]) < 0)
    assert len(outside)
    np.save(directory / "selected.npy", np.sort(np.r_[run.selected[1:], outside[0]]))
    with pytest.raises(InvalidRunError, match="outside the clustering's pool"):
        load_sampling_run(directory)


# ----------------------------------------------------------------------------- pieces


def test_asinh_stretch() -> None:
    image = np.linspace(0.0, 1.0, 10_000).reshape(100, 100)
    grey = asinh_stretch(image, percentiles=(0.0, 100.0), softening=10.0)
    assert grey.dtype == np.uint8 and grey[0, 0] == 0 and grey[-1, -1] == 255
    assert (np.diff(grey.ravel().astype(int)) >= 0).all()
    middle = int(grey.ravel()[5000])  # asinh lifts the faint end above linear
    assert middle == round(255 * np.arcsinh(5.0) / np.arcsinh(10.0))
    assert not asinh_stretch(np.full((8, 8), 3.0)).any()
    holes = image.copy()
    holes[:10] = np.nan
    assert not asinh_stretch(holes)[:10].any() and asinh_stretch(holes)[-1, -1] == 255
    assert not asinh_stretch(np.full((4, 4), np.nan)).any()


def test_thumbnail_png_sizes_and_orientation() -> None:
    image = np.zeros((128, 128), dtype=np.float32)
    image[:16, :16] = 1.0  # first numpy rows: the bottom of a FITS-style display
    big = Image.open(io.BytesIO(thumbnail_png(image)))
    assert big.size == (64, 64) and big.mode == "L"
    pixels = np.asarray(big)
    assert pixels[-1, 0] == 255 and pixels[0, 0] == 0
    small = Image.open(io.BytesIO(thumbnail_png(image[:32, :32])))
    assert small.size == (32, 32)


def test_gallery_clusters_by_hand() -> None:
    counts = np.array([5, 0, 9, 1, 9, 3])
    assert gallery_clusters(counts, 2) == [
        ("largest", 1, 2),
        ("largest", 2, 4),
        ("smallest", 5, 3),
        ("smallest", 4, 5),
    ]
    assert gallery_clusters(counts, 3) == [
        ("largest", 1, 2),
        ("largest", 2, 4),
        ("largest", 3, 0),
        ("smallest", 5, 3),
        ("smallest", 4, 5),
    ]
    assert gallery_clusters(np.array([0, 2]), 3) == [("largest", 1, 1)]


def test_pick_gallery_rows_mixes_curated_and_others() -> None:
    rng = np.random.default_rng(0)
    members = np.arange(100, 140)
    selected = np.array([3, 101, 105, 120, 139, 500])
    rows, curated = pick_gallery_rows(members, selected, 6, rng)
    assert len(rows) == 6 and len(set(rows.tolist())) == 6 and set(rows) <= set(members)
    assert curated.tolist() == [True, True, True, False, False, False]
    assert np.isin(rows[curated], selected).all() and not np.isin(rows[~curated], selected).any()
    rows, curated = pick_gallery_rows(np.array([101, 102]), selected, 6, rng)
    assert rows.tolist() == [101, 102] and curated.tolist() == [True, False]
    rows, curated = pick_gallery_rows(np.array([101, 105, 120, 121]), selected, 4, rng)
    assert sorted(rows.tolist()) == [101, 105, 120, 121] and curated.sum() == 3


# ----------------------------------------------------------------------------- browser


def _chromium_available() -> bool:
    if CHROMIUM.is_file():
        return True
    if shutil.which("apt-get") is None:
        return False
    subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
        capture_output=True,
        timeout=600,
        check=False,
    )
    return CHROMIUM.is_file()


def _chromium(page: Path, *args: str) -> subprocess.CompletedProcess:
    """Run headless Chromium on ``page`` with a fresh profile, removed afterwards."""
    profile = Path(tempfile.mkdtemp(prefix="chromium-profile-"))
    command = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
        "--window-size=1280,2000", *args, page.resolve().as_uri(),
    ]  # fmt: skip
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def _rendered_body(page: Path) -> str:
    result = _chromium(page, "--virtual-time-budget=5000", "--dump-dom")
    match = re.search(r"<body[^>]*>", result.stdout)
    assert match, f"no DOM from chromium (rc {result.returncode}): {result.stderr[-2000:]}"
    return match.group(0)


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not _chromium_available():
        unavailable(f"/usr/bin/chromium is missing and could not be installed ({APT_LINE})")
    return CHROMIUM


def test_chromium_renders_every_image(report: Path, chromium: Path, tmp_path: Path) -> None:
    body = _rendered_body(report)
    n_images = len(re.findall(r"<img\s", report.read_text()))
    assert f'data-images="{n_images}"' in body
    assert 'data-images-ok="true"' in body and 'data-images-broken="0"' in body
    shot = tmp_path / "shot.png"
    result = _chromium(report, "--hide-scrollbars", f"--screenshot={shot}")
    assert shot.is_file(), result.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape == (2000, 1280)
    assert pixels.std() > 10  # a blank or single-colour page has ~0
    assert (pixels < 64).mean() > 0.005  # dark pixels: text, figure lines, cutouts


def test_chromium_check_catches_a_broken_image(
    report: Path, chromium: Path, tmp_path: Path
) -> None:
    page = report.read_text()
    broken = DATA_URI.sub('src="data:image/png;base64,AAAA"', page, count=1)
    path = tmp_path / "broken.html"
    path.write_text(broken)
    body = _rendered_body(path)
    assert 'data-images-ok="false"' in body and 'data-images-broken="1"' in body
