"""The evaluation report: curated vs random (vs pool, vs your weights), per category.

One self-contained page, ``report/index.html`` in the run directory: the balanced
accuracy of each probe per arm with its spread over seeds (a bar chart with error bars
and a table), the recall of every category, the verdict of curated against random, and
what was compared (labels, budget, model). It reads only the run's own files.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from astrocurate import __version__
from astrocurate.io.atomic import atomic_directory
from astrocurate.stages.evaluation.outputs import INFO, METRICS, REPORT_DIR, SCORES

PAGE = "index.html"
PROBES = {"knn": "kNN", "linear": "linear probe"}

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1100px}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:.9em}
td,th{padding:.2em .7em;text-align:right;border-bottom:1px solid #eee}
td:first-child,th:first-child{text-align:left}
p.note{color:#555;font-size:.9em}img{max-width:100%}
table.kv td{text-align:left}
"""


def write_report(run_dir: Path) -> Path:
    """Write ``report/index.html`` of an evaluation run directory; return its path."""
    info = json.loads((run_dir / INFO).read_text())
    metrics = json.loads((run_dir / METRICS).read_text())
    scores = pd.read_parquet(run_dir / SCORES)
    page = _render(info, metrics, scores)
    with atomic_directory(run_dir / REPORT_DIR, ".tmp-report-") as folder:
        (folder / PAGE).write_text(page, encoding="utf-8")
    return run_dir / REPORT_DIR / PAGE


def _render(info: dict[str, Any], metrics: dict[str, float], scores: pd.DataFrame) -> str:
    arms = list(info["arms"])
    labels = info["labels"]
    categories = list(labels["categories"])
    parts = [
        f"<h1>Evaluation of sampling run {html.escape(info['sampling_run_id'])}</h1>",
        _verdict(metrics, labels["rarest"]),
        "<h2>Balanced accuracy</h2>",
        f'<img alt="balanced accuracy per arm" src="{_chart(metrics, arms)}">',
        _table(metrics, arms, [f"{p}_balanced_accuracy" for p in PROBES], list(PROBES.values())),
        "<h2>Recall per category</h2>",
    ]
    for probe, title in PROBES.items():
        names = [f"{probe}_recall_{c}" for c in categories]
        headers = [f"{c} ({labels['categories'][c]})" for c in categories]
        parts += [f"<h3>{title}</h3>", _table(metrics, arms, names, headers)]
    parts += ["<h2>What was compared</h2>", _setup(info, scores)]
    body = "\n".join(parts)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>astrocurate evaluation"
        f"</title><style>{_STYLE}</style></head><body>{body}<p class='note'>astrocurate "
        f"{__version__}</p></body></html>\n"
    )


def _cell(metrics: dict[str, float], key: str) -> str:
    mean = metrics.get(f"{key}_mean")
    if mean is None:
        return "<td>-</td>"
    return f"<td>{mean:.3f} &plusmn; {metrics.get(f'{key}_std', 0.0):.3f}</td>"


def _table(metrics: dict[str, float], arms: list[str], names: list[str], headers: list[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ["arm", *headers])
    rows = [
        f"<tr><td>{html.escape(arm)}</td>"
        + "".join(_cell(metrics, f"{arm}_{n}") for n in names)
        + "</tr>"
        for arm in arms
    ]
    note = "<p class='note'>mean &plusmn; sample standard deviation over seeds</p>"
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>{note}"


def _verdict(metrics: dict[str, float], rarest: str) -> str:
    """Say in one paragraph whether the curated arm is ahead of the random one."""
    lines = []
    for probe, title in PROBES.items():
        key = f"curated_ahead_{probe}"
        if key not in metrics:
            continue
        gain = metrics.get(f"curated_minus_random_{probe}_balanced_accuracy", float("nan"))
        rare = metrics.get(f"curated_minus_random_{probe}_rarest_recall", float("nan"))
        state = "ahead of" if metrics[key] else "not clearly ahead of"
        lines.append(
            f"{title}: curated is {state} random (balanced accuracy {gain:+.3f}, recall of "
            f"the rarest category '{html.escape(rarest)}' {rare:+.3f}; ahead means both "
            "differences exceed the sum of the two spreads)"
        )
    return "<p>" + "<br>".join(lines) + "</p>" if lines else ""


def _chart(metrics: dict[str, float], arms: list[str]) -> str:
    """Bar chart of the balanced accuracy per arm and probe, as a PNG data URI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 3.2), dpi=100)
    width = 0.8 / len(PROBES)
    x = np.arange(len(arms))
    for i, (probe, title) in enumerate(PROBES.items()):
        keys = [f"{arm}_{probe}_balanced_accuracy" for arm in arms]
        means = [metrics.get(f"{k}_mean", np.nan) for k in keys]
        errors = [metrics.get(f"{k}_std", 0.0) for k in keys]
        axis.bar(x + i * width, means, width, yerr=errors, capsize=3, label=title)
    axis.set_xticks(x + width * (len(PROBES) - 1) / 2, arms)
    axis.set_ylabel("balanced accuracy")
    axis.set_ylim(0, 1)
    axis.legend(loc="upper right", fontsize=8, ncols=len(PROBES))
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _setup(info: dict[str, Any], scores: pd.DataFrame) -> str:
    """Return a key-value table of the labels, the arms and the pretraining."""
    pretraining = info["pretraining"]
    rows = {
        "labels": f"{info['labels']['source']}: {info['labels']['cutouts']} cutouts",
        "folds": "grouped by sky: train and test never share a patch of sky",
        "seeds": str(scores["seed"].nunique()),
        "method": f"{pretraining['method']} on {pretraining['encoder']}",
        "budget": f"{pretraining['images_seen']} images seen per arm and seed, batch "
        f"{pretraining['batch_size']}",
        "arms": ", ".join(
            f"{name} ({arm['cutouts']} cutouts)" if arm["cutouts"] else name
            for name, arm in info["arms"].items()
        ),
    }
    body = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in rows.items()
    )
    return f"<table class='kv'>{body}</table>"
