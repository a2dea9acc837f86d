"""A self-contained HTML report, built from reusable sections.

A report is a title and a list of :class:`Section` (a heading and an HTML body). Figures are
matplotlib figures embedded as base64 PNGs, so the file has no external assets and can be mailed
or archived as is. Section builders turn a :class:`~modalign.eval.suite.SplitEvaluation` into
readable plots with short explanations; other code (the demo, training) adds its own sections
with :func:`figure_html`, :func:`table_html`, :func:`image_html`, :func:`training_section` and
:func:`examples_section`.

Example:
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "report.html"
    >>> write_report(p, "Demo", [Section("Numbers", table_html([[1, 0.5]], ["a", "b"]))])
    >>> "<table" in p.read_text()
    True
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from cycler import cycler
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from modalign.eval.suite import SplitEvaluation
from modalign.io import write_atomic

PALETTE = ["#3366cc", "#ee7733", "#229966", "#cc3355", "#8855bb", "#777777"]
STYLE: dict[str, Any] = {
    "font.size": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "axes.prop_cycle": cycler(color=PALETTE),
}


def subplots(
    ncols: int = 1, figsize: tuple[float, float] = (6, 3.6), fit_labels: bool = False
) -> tuple[Figure, list[Axes]]:
    """A figure with ``ncols`` axes in the report's style (no pyplot, no global state).

    Margins are fixed in inches, room for a title, axis labels and short tick labels: a layout
    engine measures every text of the figure several times per draw, which was 40% of a small
    report's time. ``fit_labels=True`` (long tick labels such as class names) asks matplotlib's
    constrained layout instead.
    """
    with matplotlib.rc_context(STYLE):  # type: ignore[arg-type]
        fig = Figure(figsize=figsize, layout="constrained" if fit_labels else None)
        axes = fig.subplots(1, ncols, squeeze=False)[0]
    if not fit_labels:
        width, height = figsize
        left, right, gap = 0.8, 0.2, 0.75  # inches: y label + ticks, right edge, between axes
        axis = (width - left - right - gap * (ncols - 1)) / ncols
        fig.subplots_adjust(
            left=left / width,
            right=1 - right / width,
            bottom=0.6 / height,
            top=1 - 0.4 / height,
            wspace=gap / axis,
        )
    return fig, list(axes)


@dataclass(frozen=True)
class Section:
    """One part of a report: a heading and its HTML body (already escaped where needed)."""

    title: str
    html: str


@dataclass(frozen=True)
class RetrievalExample:
    """One query and its top results, for :func:`examples_section`.

    Args:
        query: the query shown as text (e.g. a caption).
        results: (thumbnail, caption, score, is_hit) per retrieved item, best first; a thumbnail
            is an (H, W[, 3|4]) array, a path to an image file, or None.
    """

    query: str
    results: Sequence[tuple[np.ndarray | str | os.PathLike[str] | None, str, float, bool]]


def figure_html(fig: Figure, alt: str = "") -> str:
    """Embed a matplotlib figure as a base64 PNG ``<img>`` and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img class="fig" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def image_html(
    image: np.ndarray | str | os.PathLike[str] | None, alt: str = "", size: int = 96
) -> str:
    """A thumbnail ``<img>`` from an array or image file, embedded as base64 PNG.

    The image is scaled to fit a ``size`` x ``size`` white square, keeping its aspect ratio; a
    2-D array is shown in grey from its minimum to its maximum. Drawn with Pillow: a matplotlib
    figure per thumbnail cost about 16 ms each, most of a report's examples section.
    """
    if image is None:
        return f'<div class="thumb empty" style="width:{size}px;height:{size}px"></div>'
    buf = io.BytesIO()
    _square_thumbnail(image, size).save(buf, format="PNG")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img class="thumb" width="{size}" height="{size}" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _square_thumbnail(image: np.ndarray | str | os.PathLike[str], size: int) -> Any:
    """An RGB ``PIL.Image`` of ``size`` x ``size``: the image fitted and centred on white."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        arr = np.asarray(image)
        if arr.ndim == 2:  # grey, scaled from the minimum to the maximum (imshow's default)
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr, dtype=np.float64)
        if arr.dtype.kind == "f":
            arr = (np.clip(arr, 0.0, 1.0) * 255).round()
        picture = Image.fromarray(arr.astype(np.uint8))
    else:
        picture = Image.open(os.fspath(image))
    picture = picture.convert("RGBA")
    scale = size / max(picture.size)
    fitted = picture.resize(
        (max(1, round(picture.width * scale)), max(1, round(picture.height * scale))),
        Image.Resampling.LANCZOS,
    )
    canvas = Image.new("RGBA", (size, size), "white")
    canvas.alpha_composite(fitted, ((size - fitted.width) // 2, (size - fitted.height) // 2))
    return canvas.convert("RGB")


def _cell(v: object) -> str:
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{v:.3f}" if abs(v) < 1000 else f"{v:,.0f}"
    return html.escape(str(v))


def table_html(rows: Sequence[Sequence[object]], header: Sequence[str], caption: str = "") -> str:
    """An HTML table; floats are shown with 3 decimals, text is escaped.

    Example:
        >>> table_html([["a", 0.12345]], ["name", "value"])
        '<table><thead><tr><th>name</th><th>value</th></tr></thead><tbody><tr><td>a</td><td>0.123</td></tr></tbody></table>'
    """
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _p(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1.5em;color:#222;line-height:1.45}
h1{font-size:1.9em;margin-bottom:.1em}h2{border-bottom:2px solid #e5e5e5;padding-bottom:.2em;margin-top:2em}
.subtitle{color:#666;margin-top:0}.note{color:#555;max-width:52em}
img.fig{max-width:100%;display:block;margin:.8em 0}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}caption{text-align:left;color:#555;padding:.3em 0}
th,td{padding:.3em .8em;border-bottom:1px solid #e5e5e5;text-align:right}
th:first-child,td:first-child{text-align:left}thead th{background:#f5f7fa}
ul.summary li{margin:.35em 0}li.good::marker{content:"✔  ";color:#229966}
li.bad::marker{content:"⚠  ";color:#cc3355}li.info::marker{content:"•  ";color:#3366cc}
.examples{display:grid;gap:1em}.example{border:1px solid #e5e5e5;border-radius:8px;padding:.6em .9em}
.example .q{font-weight:600;margin-bottom:.4em}.row{display:flex;gap:.6em;flex-wrap:wrap}
.item{width:110px;font-size:.8em;color:#444;text-align:center}.item img,.thumb{border-radius:4px;
border:3px solid #ddd}.item.hit img{border-color:#229966}.thumb.empty{background:#eee}
"""


def render_report(title: str, sections: Sequence[Section], subtitle: str = "") -> str:
    """The report as one HTML string."""
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if subtitle:
        parts.append(f'<p class="subtitle">{html.escape(subtitle)}</p>')
    parts += [f"<section><h2>{html.escape(s.title)}</h2>{s.html}</section>" for s in sections]
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}'
        f"</title><style>{CSS}</style></head><body>{''.join(parts)}</body></html>"
    )


def write_report(
    path: str | os.PathLike[str], title: str, sections: Sequence[Section], subtitle: str = ""
) -> None:
    """Write a self-contained HTML report atomically."""
    text = render_report(title, sections, subtitle)

    def write(f: Any) -> None:
        f.write(text)

    write_atomic(path, write)


# --------------------------------------------------------------------------- summary


def _pairs(ev: SplitEvaluation) -> list[str]:
    return list(ev.retrieval)


def _m(ev: SplitEvaluation, subject: str, metric: str) -> float:
    return ev.metrics.get(f"{ev.split}/{subject}/{metric}", float("nan"))


def summary_lines(ev: SplitEvaluation) -> list[tuple[str, str]]:
    """Plain-language findings as (kind, sentence); kind is ``good``, ``bad`` or ``info``.

    Example:
        >>> ev = SplitEvaluation("test", metrics={"test/a_vs_b/modality_gap": 0.9,
        ...     "test/a_vs_b/gap_share": 0.6})
        >>> summary_lines(ev)[0][0]
        'bad'
    """
    out: list[tuple[str, str]] = []
    for pair in _pairs(ev):
        r1, r10 = _m(ev, pair, "recall@1"), _m(ev, pair, "recall@10")
        n = int(_m(ev, pair, "n_queries"))
        lo, hi = ev.intervals.get(f"{ev.split}/{pair}/recall@1", (math.nan, math.nan))
        chance = 1.0 / max(_m(ev, pair, "n_gallery"), 1.0)
        kind = "good" if r1 >= 0.5 else "bad" if r10 < 0.5 else "info"
        q, g = pair.split("_to_")
        out.append(
            (
                kind,
                f"{q} → {g}: the right item comes first for {r1:.0%} of {n:,} queries "
                f"(95% interval {lo:.0%}–{hi:.0%}; chance ≈ {chance:.2%}) and is in the top 10 for {r10:.0%}.",
            )
        )
    out += _gap_lines(ev) + _similarity_lines(ev) + _hub_lines(ev)
    out += [("bad", w[0].upper() + w[1:] + ".") for w in ev.warnings]
    return out


def _gap_lines(ev: SplitEvaluation) -> list[tuple[str, str]]:
    out = []
    for key in [k for k in ev.metrics if k.endswith("/modality_gap")]:
        pair = key.split("/")[1]
        gap, share = ev.metrics[key], _m(ev, pair, "gap_share")
        a, b = pair.split("_vs_")
        text = f"Modality gap {a}/{b}: centroids are {gap:.2f} apart; a constant offset explains {share:.0%} of the distance between partners."
        gain = _centering_gain(ev, a, b)
        if gain is not None:
            text += f" Centring each modality changes mean recall@1 by {gain:+.1%}."
        out.append(("bad" if share > 0.3 or (gain or 0) > 0.02 else "info", text))
    return out


def _centering_gain(ev: SplitEvaluation, a: str, b: str) -> float | None:
    keys = [f"{a}_to_{b}", f"{b}_to_{a}"]
    raw = [_m(ev, k, "recall@1") for k in keys]
    cen = [ev.metrics.get(f"{ev.split}_centered/{k}/recall@1", math.nan) for k in keys]
    diffs = [c - r for c, r in zip(cen, raw, strict=True) if not (math.isnan(c) or math.isnan(r))]
    return float(np.mean(diffs)) if diffs else None


def _similarity_lines(ev: SplitEvaluation) -> list[tuple[str, str]]:
    out = []
    for key in [k for k in ev.metrics if k.endswith("/alignment_score")]:
        pair = key.split("/")[1]
        score, overlap = ev.metrics[key], _m(ev, pair, "sim_overlap")
        kind = "good" if overlap < 0.2 else "bad" if overlap > 0.5 else "info"
        out.append(
            (
                kind,
                f"{pair.replace('_vs_', '/')}: positives score {_m(ev, pair, 'pos_sim_mean'):.2f} on average and "
                f"negatives {_m(ev, pair, 'neg_sim_mean'):.2f} (alignment score {score:.1f}); the two distributions overlap by {overlap:.0%}.",
            )
        )
    return out


def _hub_lines(ev: SplitEvaluation) -> list[tuple[str, str]]:
    out = []
    for key in [k for k in ev.metrics if k.endswith("/hubness_skew@10")]:
        pair, skew = key.split("/")[1], ev.metrics[key]
        if skew > 3:
            anti = _m(ev, pair, "antihub_share@10")
            out.append(
                (
                    "bad",
                    f"Hubs in {pair.replace('_to_', ' → ')}: k-occurrence skewness {skew:.1f}; a few gallery items crowd many top-10 lists and {anti:.0%} appear in none.",
                )
            )
    return out


def summary_section(ev: SplitEvaluation) -> Section:
    """The plain-language findings as a bulleted list."""
    items = "".join(f'<li class="{k}">{html.escape(t)}</li>' for k, t in summary_lines(ev))
    return Section("Summary", f'<ul class="summary">{items}</ul>')


# --------------------------------------------------------------------------- sections


def retrieval_section(ev: SplitEvaluation) -> Section:
    """Recall curves per direction, recall@k bars with 95% intervals, and the full table."""
    pairs = _pairs(ev)
    fig, (ax1, ax2) = subplots(2, (11, 3.8))
    for i, pair in enumerate(pairs):
        ranks = np.sort(ev.retrieval[pair][1].first_rank)
        ks = np.unique(np.geomspace(1, max(ranks.max(), 2), 200).astype(int))
        ax1.plot(
            ks,
            np.searchsorted(ranks, ks, side="right") / len(ranks),
            label=pair.replace("_to_", " → "),
            color=PALETTE[i % 6],
            lw=2,
        )
    ax1.set(
        xscale="log",
        xlabel="k (log scale)",
        ylabel="recall@k",
        title="Share of queries with a hit in the top k",
        ylim=(0, 1.02),
    )
    ax1.legend(frameon=False)
    cut = [k for k in ev.retrieval[pairs[0]][1].ks] if pairs else []
    width = 0.8 / max(len(pairs), 1)
    for i, pair in enumerate(pairs):
        vals = [_m(ev, pair, f"recall@{k}") for k in cut]
        ci = [
            ev.intervals.get(f"{ev.split}/{pair}/recall@{k}", (v, v))
            for k, v in zip(cut, vals, strict=True)
        ]
        err = np.array(
            [
                [v - lo for (lo, _), v in zip(ci, vals, strict=True)],
                [hi - v for (_, hi), v in zip(ci, vals, strict=True)],
            ]
        )
        ax2.bar(
            np.arange(len(cut)) + i * width,
            vals,
            width,
            yerr=err,
            capsize=3,
            label=pair.replace("_to_", " → "),
            color=PALETTE[i % 6],
        )
    ax2.set(
        xticks=np.arange(len(cut)) + 0.4 - width / 2,
        xticklabels=[f"R@{k}" for k in cut],
        ylim=(0, 1.05),
        title="Recall@k with 95% bootstrap intervals",
    )
    metrics = [
        "recall@1",
        "recall@5",
        "recall@10",
        "mrr",
        "map",
        "ndcg@10",
        "mean_rank",
        "median_rank",
        "n_queries",
        "n_gallery",
    ]
    ints = {"n_queries", "n_gallery"}
    rows = [
        [pair.replace("_to_", " → ")]
        + [int(_m(ev, pair, m)) if m in ints else _m(ev, pair, m) for m in metrics]
        for pair in pairs
    ]
    note = _p(
        "Each query counts as a hit when any item of its group is retrieved; exact duplicate rows within a group count once. Bars show 95% bootstrap intervals over queries."
    )
    return Section(
        "Retrieval",
        note + figure_html(fig, "recall curves") + table_html(rows, ["direction", *metrics]),
    )


def similarity_section(ev: SplitEvaluation) -> Section:
    """Histograms of positive vs negative cosine similarity per modality pair."""
    pairs = list(ev.similarity)
    if not pairs:
        return Section("Similarity distributions", _p("No modality pair to compare."))
    fig, axes = subplots(len(pairs), (5.5 * len(pairs), 3.4))
    edges = list(np.linspace(-1, 1, 81))
    for ax, pair in zip(axes, pairs, strict=True):
        s = ev.similarity[pair]
        # one filled outline per histogram ("stepfilled") draws as fast as one line; the default
        # draws one rectangle per bin (480 artists for three pairs), the same picture
        ax.hist(s["negative"], edges, density=True, alpha=0.55, color=PALETTE[5], label="negatives", histtype="stepfilled")  # fmt: skip
        ax.hist(s["positive"], edges, density=True, alpha=0.65, color=PALETTE[2], label="positives", histtype="stepfilled")  # fmt: skip
        ax.set(title=pair.replace("_vs_", " vs "), xlabel="cosine similarity", yticks=[])
        ax.legend(frameon=False)
    keys = [
        "pos_sim_mean",
        "neg_sim_mean",
        "sim_overlap",
        "alignment_score",
        "wang_isola_alignment",
    ]
    rows = [[p.replace("_vs_", " vs ")] + [_m(ev, p, k) for k in keys] for p in pairs]
    note = _p(
        "A well-aligned space separates the green (partners) from the grey (non-partners). Alignment score = (mean positive − mean negative) / std of all similarities."
    )
    return Section(
        "Similarity distributions",
        note + figure_html(fig, "similarity histograms") + table_html(rows, ["pair", *keys]),
    )


def gap_section(ev: SplitEvaluation) -> Section:
    """Shared 2-D PCA of the modalities (the modality gap), and retrieval with/without centring."""
    fig, (ax,) = subplots(1, (5.5, 4.5))
    for i, (m, xy) in enumerate(ev.projection.items()):
        ax.scatter(xy[:, 0], xy[:, 1], s=6, alpha=0.45, color=PALETTE[i % 6], label=m)
        ax.scatter(
            xy[:, 0].mean(),
            xy[:, 1].mean(),
            s=160,
            marker="X",
            color=PALETTE[i % 6],
            edgecolor="black",
        )
    ax.set(title="Modalities in a shared 2-D PCA (X = centroid)", xlabel="PC 1", ylabel="PC 2")
    ax.legend(frameon=False, markerscale=3)
    gap_rows = [
        [k.split("/")[1].replace("_vs_", " vs "), v, _m(ev, k.split("/")[1], "gap_share")]
        for k, v in ev.metrics.items()
        if k.endswith("/modality_gap")
    ]
    cen = [
        [
            p.replace("_to_", " → "),
            _m(ev, p, "recall@1"),
            ev.metrics.get(f"{ev.split}_centered/{p}/recall@1", math.nan),
        ]
        for p in _pairs(ev)
    ]
    for row in cen:
        row.append(row[2] - row[1])  # type: ignore[operator]
    note = _p(
        "Contrastive training often leaves each modality in its own cone. Mean-centring each modality and renormalising (post hoc) removes the constant offset; the table shows whether retrieval gains from it."
    )
    body = (
        note
        + figure_html(fig, "modality gap")
        + table_html(gap_rows, ["pair", "centroid distance", "share of partner distance"])
    )
    return Section(
        "Modality gap",
        body + table_html(cen, ["direction", "recall@1", "recall@1 centred", "change"]),
    )


def collapse_section(ev: SplitEvaluation) -> Section:
    """Singular-value spectra per modality, with effective rank and uniformity."""
    fig, (ax,) = subplots(1, (6, 3.6))
    for i, (m, s) in enumerate(ev.spectra.items()):
        ax.plot(
            np.arange(1, len(s) + 1),
            s / s[0],
            lw=2,
            color=PALETTE[i % 6],
            label=f"{m} (eff. rank {_m(ev, m, 'effective_rank'):.1f})",
        )
    ax.set(
        yscale="log",
        xlabel="component",
        ylabel="singular value / largest",
        title="Spectrum: a quick drop means collapsed dimensions",
    )
    ax.legend(frameon=False)
    keys = ["effective_rank", "effective_rank_ratio", "dim_std_mean", "dim_std_min", "uniformity"]
    rows = [[m] + [_m(ev, m, k) for k in keys] for m in ev.spectra]
    warn = "".join(_p("Warning — " + w) for w in ev.warnings)
    return Section(
        "Collapse and uniformity",
        figure_html(fig, "spectra") + table_html(rows, ["modality", *keys]) + warn,
    )


def hubness_section(ev: SplitEvaluation) -> Section:
    """k-occurrence distributions (how often each gallery item is in someone's top 10)."""
    pairs = list(ev.k_occurrence)
    if not pairs:
        return Section("Hubness", _p("No retrieval direction."))
    fig, (ax,) = subplots(1, (6, 3.4))
    for i, p in enumerate(pairs):
        occ = np.sort(ev.k_occurrence[p])[::-1]
        share = np.arange(1, len(occ) + 1) / len(occ)  # share of items with at least this count
        ax.step(
            np.maximum(occ, 0.5),
            share,
            where="post",
            lw=2,
            color=PALETTE[i % 6],
            label=p.replace("_to_", " → "),
        )
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="times in someone's top 10 (k-occurrence, log)",
        ylabel="share of gallery items with at least that",
        title="Hubness: a long flat tail to the right means hubs",
    )
    ax.legend(frameon=False)
    rows = [
        [p.replace("_to_", " → "), _m(ev, p, "hubness_skew@10"), _m(ev, p, "antihub_share@10")]
        for p in pairs
    ]
    return Section(
        "Hubness",
        figure_html(fig, "k-occurrence")
        + table_html(rows, ["direction", "skewness", "share never retrieved"]),
    )


def classification_section(ev: SplitEvaluation) -> Section:
    """Zero-shot confusion matrices and per-class accuracy, and probe accuracies."""
    keys = [
        "zero_shot_top1",
        "zero_shot_top5",
        "zero_shot_balanced_accuracy",
        "linear_probe_accuracy",
        "knn_accuracy",
    ]
    mods = sorted(
        {
            k.split("/")[1]
            for k in ev.metrics
            if k.split("/")[-1] in keys and k.startswith(ev.split + "/")
        }
    )
    body = table_html([[m] + [_m(ev, m, k) for k in keys] for m in mods], ["modality", *keys])
    for m, (y, pred) in ev.confusion.items():
        n = len(ev.class_names)
        cm = np.zeros((n, n))
        np.add.at(cm, (y, pred), 1)
        cm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        size = min(1.6 + 0.35 * n, 10)
        fig, (ax,) = subplots(1, (size + 1.5, size), fit_labels=True)  # class-name ticks
        im = ax.imshow(cm, cmap="Blues", vmin=0, vmax=1)
        ax.set(
            xticks=range(n),
            yticks=range(n),
            xlabel="predicted",
            ylabel="true",
            title=f"Zero-shot confusion ({m})",
        )
        ax.set_xticklabels(ev.class_names, rotation=60, ha="right")
        ax.set_yticklabels(ev.class_names)
        ax.grid(False)
        fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class")
        body += figure_html(fig, f"confusion {m}")
    note = _p(
        "Zero-shot: each item takes the class whose prompt embedding is most similar. Probes are 5-fold cross-validated on frozen embeddings."
    )
    return Section("Classification", note + body)


def evaluation_sections(ev: SplitEvaluation) -> list[Section]:
    """Every section that the evaluation supports, summary first."""
    sections = [summary_section(ev)]
    if ev.retrieval:
        sections.append(retrieval_section(ev))
    if ev.similarity:
        sections += [similarity_section(ev), gap_section(ev)]
    if ev.spectra:
        sections.append(collapse_section(ev))
    if ev.k_occurrence:
        sections.append(hubness_section(ev))
    if any(k.split("/")[-1].startswith(("zero_shot", "linear_probe")) for k in ev.metrics):
        sections.append(classification_section(ev))
    return sections


def read_metrics_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a run's ``metrics.jsonl``; blank or truncated last lines are skipped."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def recall_at_1_keys(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The validation recall@1 keys logged in ``rows`` (not recall@10 and the like).

    Example:
        >>> recall_at_1_keys([{"val/a_to_b/recall@1": 1, "val/a_to_b/recall@10": 1, "train/loss": 1}])
        ['val/a_to_b/recall@1']
    """
    return sorted({k for r in rows for k in r if k.startswith("val/") and k.endswith("/recall@1")})


def training_section(metrics_jsonl: str | os.PathLike[str]) -> Section:
    """Training curves from a run's ``metrics.jsonl``: loss, temperature, learning rate, val metrics."""
    rows = read_metrics_jsonl(metrics_jsonl)
    panels = [
        ("train/loss", "training loss"),
        ("train/temperature", "temperature"),
        ("lr", "learning rate"),
    ]
    val_keys = recall_at_1_keys(rows)
    panels = [(k, t) for k, t in panels if any(k in r for r in rows)]
    n = len(panels) + (1 if val_keys else 0)
    if n == 0:
        return Section("Training", _p("No training metrics were logged."))
    fig, axes = subplots(n, (4.2 * n, 3.2))
    for ax, (key, title) in zip(axes, panels, strict=False):
        pts = [(r.get("step", i), r[key]) for i, r in enumerate(rows) if key in r]
        ax.plot(*zip(*pts, strict=True), lw=1.8)
        ax.set(title=title, xlabel="step")
    if val_keys:
        ax = axes[-1]
        for k in val_keys:
            pts = [(r.get("step", i), r[k]) for i, r in enumerate(rows) if k in r]
            ax.plot(*zip(*pts, strict=True), marker="o", ms=3, lw=1.5, label=k.removeprefix("val/"))
        ax.set(title="validation recall@1", xlabel="step", ylim=(0, 1))
        ax.legend(frameon=False, fontsize=8)
    return Section("Training", figure_html(fig, "training curves"))


def examples_section(
    examples: Sequence[RetrievalExample], title: str = "Example retrievals"
) -> Section:
    """Queries with thumbnails of their top results; correct results get a green frame."""
    blocks = []
    for ex in examples:
        items = "".join(
            f'<div class="item{" hit" if hit else ""}">{image_html(img, cap)}<div>{html.escape(cap)}</div><div>{score:.2f}</div></div>'
            for img, cap, score, hit in ex.results
        )
        blocks.append(
            f'<div class="example"><div class="q">“{html.escape(ex.query)}”</div><div class="row">{items}</div></div>'
        )
    return Section(title, f'<div class="examples">{"".join(blocks)}</div>')
