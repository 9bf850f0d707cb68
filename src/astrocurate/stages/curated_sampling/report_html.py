"""Report page: the self-contained HTML, every image embedded as a PNG data URI."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from typing import Any

from astrocurate import __version__
from astrocurate.stages.curated_sampling.report_data import SETS, ClassShares, SamplingRun
from astrocurate.stages.curated_sampling.report_galleries import (
    ASINH_SOFTENING,
    STRETCH_PERCENTILES,
    THUMBNAIL_PX,
    Gallery,
)
from astrocurate.stages.curated_sampling.report_plots import Figure, format_value

__all__ = ["render_html"]


_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1100px}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ccc}
table.kv{border-collapse:collapse;font-size:.9em}
table.kv td{padding:.15em .8em .15em 0;vertical-align:top}
table.kv td:first-child{color:#666}
img.fig{max-width:100%;height:auto;display:block}
p.caption,p.note{color:#555;font-size:.9em}
div.gallery{display:flex;flex-wrap:wrap;gap:6px}
figure.thumb{margin:0;text-align:center;font-size:.7em;color:#444}
figure.thumb img{width:96px;height:96px;image-rendering:pixelated;
 border:3px solid #ccc;display:block}
figure.thumb.curated img{border-color:#ee6677}
"""

_SCRIPT = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (im) { return !(im.complete && im.naturalWidth > 0); });
  document.body.setAttribute("data-images", String(images.length));
  document.body.setAttribute("data-images-broken", String(broken.length));
  document.body.setAttribute("data-images-ok", broken.length === 0 ? "true" : "false");
});
"""


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _kv_table(rows: Sequence[tuple[str, Any]]) -> str:
    cells = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in rows
    )
    return f'<table class="kv">{cells}</table>'


def _header_html(
    run: SamplingRun, entropies: Mapping[str, float], classes: ClassShares | None
) -> str:
    """Title, run parameters and key numbers."""
    p = run.params
    parameters = [
        (k, p[k])
        for k in (
            "num_samples",
            "strategy",
            "level",
            "baseline",
            "seed",
            "n_levels",
            "pool_size",
            "clustering_run_id",
        )
        if k in p
    ]
    parameters += [("clusters per level", " / ".join(str(k) for k in run.n_clusters))]
    parameters += [(k, p[k]) for k in ("clustering_dir", "features_dir", "merged_dir") if k in p]
    largest = run.metrics.get(f"level_{run.top}_largest_share_curated")
    numbers = [
        ("pool points", f"{run.n_pool:,}"),
        ("curated cutouts", f"{len(run.selected):,}"),
        (
            f"level-{run.top} entropy pool / random / curated",
            " / ".join(format_value(entropies.get(s)) for s in SETS),
        ),
    ]
    if largest is not None:
        numbers.append(
            (
                f"largest level-{run.top} cluster's share of the curated sample",
                format_value(largest),
            )
        )
    if classes is not None:
        numbers.append(
            (
                "class entropy pool / random / curated",
                " / ".join(format_value(classes.entropies.get(s)) for s in SETS),
            )
        )
    return (
        f'<h1>Curated sample report</h1><p class="note">{html.escape(str(run.directory))}</p>'
        f"<h2>Key numbers</h2>{_kv_table(numbers)}<h2>Run parameters</h2>{_kv_table(parameters)}"
    )


def _figure_html(figure: Figure) -> str:
    return (
        f"<h3>{html.escape(figure.title)}</h3>"
        f'<img class="fig" src="{_data_uri(figure.png)}" alt="{html.escape(figure.title)}">'
        f'<p class="caption">{html.escape(figure.caption)} '
        f'(<a href="{html.escape(figure.name)}">{html.escape(figure.name)}</a>)</p>'
    )


def _gallery_html(gallery: Gallery, top: int) -> str:
    items = []
    for t in gallery.thumbnails:
        label = f"#{t.cutout_id} · {t.window_size}px" + (
            f" · {t.truth_class}" if t.truth_class else ""
        )
        css = "thumb curated" if t.curated else "thumb"
        alt = f"cutout {t.cutout_id}" + (" (curated)" if t.curated else "")
        items.append(
            f'<figure class="{css}"><img src="{_data_uri(t.png)}" alt="{html.escape(alt)}" '
            f'title="{html.escape(label)}"><figcaption>{html.escape(label)}</figcaption></figure>'
        )
    title = gallery.title or (
        f"{gallery.kind} #{gallery.rank}: level-{top} cluster {gallery.cluster} — "
        f"{gallery.pool_count:,} pool points, {gallery.curated_count:,} curated"
    )
    return f'<h3>{html.escape(title)}</h3><div class="gallery">{"".join(items)}</div>'


def render_html(
    run: SamplingRun,
    *,
    entropies: Mapping[str, float],
    classes: ClassShares | None,
    balance: Sequence[Figure],
    feature_map_figure: Figure,
    galleries: Sequence[Gallery],
    sizes: Sequence[Figure],
) -> str:
    """Assemble the page (every image embedded as a data URI)."""
    quality = [g for g in galleries if g.title is not None]
    lo, hi = STRETCH_PERCENTILES
    stretch = (
        f"Each cutout is clipped to its own {lo:g}th-{hi:g}th percentile and shown as "
        f"asinh({ASINH_SOFTENING:g}·x)/asinh({ASINH_SOFTENING:g}), x in [0, 1], origin at the "
        f"lower left; cutouts over {THUMBNAIL_PX} px are area-averaged down. Red frames: in the "
        "curated sample; grey: not. Each gallery shows up to half curated cutouts, the rest "
        "drawn from the cluster's other members."
    )
    body = [
        _header_html(run, entropies, classes),
        "<h2>Balance</h2>",
        *(_figure_html(f) for f in balance),
        "<h2>Feature map</h2>",
        _figure_html(feature_map_figure),
        f"<h2>Galleries: largest and smallest level-{run.top} clusters</h2>",
        f'<p class="note">{html.escape(stretch)}</p>',
        *(_gallery_html(g, run.top) for g in galleries if g.title is None),
        *(["<h2>Quality: outliers, near-duplicates, noise</h2>"] if quality else []),
        *(_gallery_html(g, run.top) for g in quality),
        "<h2>Cluster sizes per level</h2>",
        *(_figure_html(f) for f in sizes),
        f'<p class="note">astrocurate {html.escape(__version__)}</p>',
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>astrocurate: curated sample report</title>"
        f"<style>{_STYLE}</style><script>{_SCRIPT}</script></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
