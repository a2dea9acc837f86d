"""Report sections: one builder per section, from an evaluation, a training log or examples.

Each builder turns a :class:`~modalign.eval.suite.SplitEvaluation` (or a run's ``metrics.jsonl``,
or a few retrieval examples) into a :class:`~modalign.report.html.Section`: readable plots, a
table and a short explanation. :func:`evaluation_sections` picks every section an evaluation
supports, summary first.

Example:
    >>> from modalign.types import Direction, EmbeddingSet
    >>> from modalign.eval.suite import evaluate_split
    >>> x = np.eye(3, dtype=np.float32)
    >>> ev = evaluate_split(EmbeddingSet({"a": x, "b": x}, ids=list("xyz")), "test", n_boot=0)
    >>> [s.title for s in evaluation_sections(ev)]
    ['Summary', 'Retrieval', 'Similarity distributions', 'Modality gap', 'Collapse and uniformity', 'Hubness']
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes

from modalign.eval.suite import CENTERED, SplitEvaluation
from modalign.report.html import (
    PALETTE,
    Section,
    figure_html,
    image_html,
    note_html,
    panel_figure,
    subplots,
    table_html,
    text_width,
)
from modalign.report.summary import summary_section
from modalign.types import Direction, MetricKey, Pair, headline_keys

#: Columns of the retrieval table.
RETRIEVAL_COLUMNS = (
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
)
COUNT_COLUMNS = frozenset({"n_queries", "n_gallery"})


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


# --------------------------------------------------------------------------- retrieval


def _plot_recall_curves(ax: Axes, ev: SplitEvaluation) -> None:
    """recall@k against k (log scale), one line per direction, from the per-query first ranks."""
    for i, d in enumerate(ev.retrieval):
        ranks = np.sort(ev.retrieval[d][1].first_rank)
        ks = np.unique(np.geomspace(1, max(ranks.max(), 2), 200).astype(int))
        hits = np.searchsorted(ranks, ks, side="right") / len(ranks)
        ax.plot(ks, hits, label=d.label, color=PALETTE[i % 6], lw=2)
    ax.set(
        xscale="log",
        xlabel="k (log scale)",
        ylabel="recall@k",
        title="Share of queries with a hit in the top k",
        ylim=(0, 1.02),
    )
    ax.legend(frameon=False)


def _plot_recall_bars(ax: Axes, ev: SplitEvaluation) -> None:
    """recall@k bars at the evaluated cut-offs with 95% bootstrap error bars, per direction."""
    directions = list(ev.retrieval)
    cut = list(ev.retrieval[directions[0]][1].ks) if directions else []
    width = 0.8 / max(len(directions), 1)
    for i, d in enumerate(directions):
        vals = [ev.value(d, f"recall@{k}") for k in cut]
        ci = [
            ev.intervals.get(ev.key(d, f"recall@{k}"), (v, v))
            for k, v in zip(cut, vals, strict=True)
        ]
        err = np.array(
            [
                [v - lo for (lo, _), v in zip(ci, vals, strict=True)],
                [hi - v for (_, hi), v in zip(ci, vals, strict=True)],
            ]
        )
        x = np.arange(len(cut)) + i * width
        ax.bar(x, vals, width, yerr=err, capsize=3, label=d.label, color=PALETTE[i % 6])
    ax.set(
        xticks=np.arange(len(cut)) + 0.4 - width / 2,
        xticklabels=[f"R@{k}" for k in cut],
        ylim=(0, 1.05),
        title="Recall@k with 95% bootstrap intervals",
    )


def retrieval_rows(ev: SplitEvaluation) -> list[list[object]]:
    """One table row per direction: its label, then :data:`RETRIEVAL_COLUMNS`."""
    return [
        [d.label]
        + [int(ev.value(d, m)) if m in COUNT_COLUMNS else ev.value(d, m) for m in RETRIEVAL_COLUMNS]
        for d in ev.retrieval
    ]


def retrieval_section(ev: SplitEvaluation) -> Section:
    """Recall curves per direction, recall@k bars with 95% intervals, and the full table."""
    fig, (ax1, ax2) = subplots(2, (11, 3.8))
    _plot_recall_curves(ax1, ev)
    _plot_recall_bars(ax2, ev)
    note = note_html(
        "Each query counts as a hit when any item of its group is retrieved; exact duplicate rows within a group count once. Bars show 95% bootstrap intervals over queries."
    )
    table = table_html(retrieval_rows(ev), ["direction", *RETRIEVAL_COLUMNS])
    return Section("Retrieval", note + figure_html(fig, "recall curves") + table)


# --------------------------------------------------------------------------- diagnostics


def similarity_section(ev: SplitEvaluation) -> Section:
    """Histograms of positive vs negative cosine similarity per modality pair."""
    pairs = list(ev.similarity)
    if not pairs:
        return Section("Similarity distributions", note_html("No modality pair to compare."))
    fig, axes = subplots(len(pairs), (5.5 * len(pairs), 3.4))
    edges = list(np.linspace(-1, 1, 81))
    for ax, pair in zip(axes, pairs, strict=True):
        s = ev.similarity[pair]
        for kind, alpha, color in (("negative", 0.55, PALETTE[5]), ("positive", 0.65, PALETTE[2])):
            # one filled outline per histogram, not 80 bar patches: the same picture, drawn in a
            # fraction of the time (the bars were half of the report's drawing)
            ax.hist(
                s[kind],
                edges,
                density=True,
                histtype="stepfilled",
                alpha=alpha,
                color=color,
                label=f"{kind}s",
            )
        ax.set(title=pair.label, xlabel="cosine similarity", yticks=[])
        ax.legend(frameon=False)
    keys = [
        "pos_sim_mean",
        "neg_sim_mean",
        "sim_overlap",
        "alignment_score",
        "wang_isola_alignment",
    ]
    rows = [[p.label] + [ev.value(p, k) for k in keys] for p in pairs]
    note = note_html(
        "A well-aligned space separates the green (partners) from the grey (non-partners). Alignment score = (mean positive − mean negative) / std of all similarities."
    )
    return Section(
        "Similarity distributions",
        note + figure_html(fig, "similarity histograms") + table_html(rows, ["pair", *keys]),
    )


def centering_rows(ev: SplitEvaluation) -> list[list[object]]:
    """Per direction: label, recall@1, recall@1 after mean centring, and the change."""
    rows: list[list[object]] = []
    for d in ev.retrieval:
        raw, centred = ev.value(d, "recall@1"), ev.value(d, "recall@1", CENTERED)
        rows.append([d.label, raw, centred, centred - raw])
    return rows


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
        [p.label, ev.value(p, "modality_gap"), ev.value(p, "gap_share")]
        for p in ev.subjects("modality_gap", Pair)
    ]
    note = note_html(
        "Contrastive training often leaves each modality in its own cone. Mean-centring each modality and renormalising (post hoc) removes the constant offset; the table shows whether retrieval gains from it."
    )
    body = (
        note
        + figure_html(fig, "modality gap")
        + table_html(gap_rows, ["pair", "centroid distance", "share of partner distance"])
    )
    header = ["direction", "recall@1", "recall@1 centred", "change"]
    return Section("Modality gap", body + table_html(centering_rows(ev), header))


def collapse_section(ev: SplitEvaluation) -> Section:
    """Singular-value spectra per modality, with effective rank and uniformity."""
    fig, (ax,) = subplots(1, (6, 3.6))
    for i, (m, s) in enumerate(ev.spectra.items()):
        ax.plot(
            np.arange(1, len(s) + 1),
            s / s[0],
            lw=2,
            color=PALETTE[i % 6],
            label=f"{m} (eff. rank {ev.value(m, 'effective_rank'):.1f})",
        )
    ax.set(
        yscale="log",
        xlabel="component",
        ylabel="singular value / largest",
        title="Spectrum: a quick drop means collapsed dimensions",
    )
    ax.legend(frameon=False)
    keys = ["effective_rank", "effective_rank_ratio", "dim_std_mean", "dim_std_min", "uniformity"]
    rows = [[m] + [ev.value(m, k) for k in keys] for m in ev.spectra]
    warn = "".join(note_html("Warning — " + w) for w in ev.warnings)
    return Section(
        "Collapse and uniformity",
        figure_html(fig, "spectra") + table_html(rows, ["modality", *keys]) + warn,
    )


def hubness_section(ev: SplitEvaluation) -> Section:
    """k-occurrence distributions (how often each gallery item is in someone's top 10)."""
    directions = list(ev.k_occurrence)
    if not directions:
        return Section("Hubness", note_html("No retrieval direction."))
    fig, (ax,) = subplots(1, (6, 3.4))
    for i, d in enumerate(directions):
        occ = np.sort(ev.k_occurrence[d])[::-1]
        share = np.arange(1, len(occ) + 1) / len(occ)  # share of items with at least this count
        ax.step(
            np.maximum(occ, 0.5), share, where="post", lw=2, color=PALETTE[i % 6], label=d.label
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
        [d.label, ev.value(d, "hubness_skew@10"), ev.value(d, "antihub_share@10")]
        for d in directions
    ]
    return Section(
        "Hubness",
        figure_html(fig, "k-occurrence")
        + table_html(rows, ["direction", "skewness", "share never retrieved"]),
    )


# --------------------------------------------------------------------------- classification

CLASSIFICATION_COLUMNS = (
    "zero_shot_top1",
    "zero_shot_top5",
    "zero_shot_balanced_accuracy",
    "linear_probe_accuracy",
    "knn_accuracy",
)


#: Inches: a confusion matrix's cell, its side at most, and the widest figure before wrapping.
CONFUSION_CELL, CONFUSION_SIDE, CONFUSION_WIDTH = 0.35, 8.0, 16.5


Rect = tuple[float, float, float, float]


def _confusion_layout(
    n_panels: int, side: float, names_width: float
) -> tuple[tuple[float, float], list[Rect], Rect]:
    """Figure size, panel rectangles and colour bar rectangle (inches) of square panels.

    Panels of ``side`` inches go in rows of as many as fit :data:`CONFUSION_WIDTH`; class names
    ``names_width`` inches wide label the rows on the left and the columns below (rotated 60
    degrees), so the margins are fitted to them without a layout engine.

    Example:
        >>> size, rects, bar = _confusion_layout(2, 3.5, 0.5)
        >>> [round(v, 3) for v in size], round(rects[1][0] - rects[0][0], 3)  # side + gap
        ([9.6, 4.985], 3.8)
    """
    left, right, top, gap = names_width + 0.6, 1.2, 0.4, 0.3
    bottom = 0.87 * names_width + 0.65  # rotated tick labels, then the axis label
    cols = max(1, min(n_panels, int((CONFUSION_WIDTH - left - right + gap) // (side + gap))))
    rows = -(-n_panels // cols)
    row_step = side + bottom + top  # every row has its titles and its column names
    width = left + cols * side + (cols - 1) * gap + right
    height = rows * row_step
    rects = [
        (left + (i % cols) * (side + gap), height - top - side - (i // cols) * row_step, side, side)
        for i in range(n_panels)
    ]
    colorbar: Rect = (width - right + 0.2, height - top - side, 0.18, side)  # beside the first row
    return (width, height), rects, colorbar


def _confusion_html(ev: SplitEvaluation) -> str:
    """The row-normalised zero-shot confusion matrices of every modality, side by side in one
    figure with one colour scale (margins fitted to the class names)."""
    n, mods = len(ev.class_names), list(ev.confusion)
    side = min(max(CONFUSION_CELL * n, 1.5), CONFUSION_SIDE)
    size, rects, bar = _confusion_layout(len(mods), side, text_width(ev.class_names))
    fig, axes = panel_figure(size, [*rects, bar])
    for ax, rect, m in zip(axes, rects, mods, strict=False):
        y, pred = ev.confusion[m]
        cm = np.zeros((n, n))
        np.add.at(cm, (y, pred), 1)
        im = ax.imshow(cm / np.maximum(cm.sum(1, keepdims=True), 1), cmap="Blues", vmin=0, vmax=1)
        ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", title=m)
        ax.set_xticklabels(ev.class_names, rotation=60, ha="right", rotation_mode="anchor")
        if rect[0] == rects[0][0]:  # the first of a row names the rows
            ax.set(ylabel="true", yticklabels=ev.class_names)
        else:
            ax.set(yticklabels=[])
        ax.grid(False)
    fig.colorbar(im, cax=axes[-1], label="share of the true class")
    return figure_html(fig, "zero-shot confusion " + ", ".join(mods))


def _classified_modalities(ev: SplitEvaluation) -> list[str]:
    return sorted({m for k in CLASSIFICATION_COLUMNS for m in ev.subjects(k, str)})


def classification_section(ev: SplitEvaluation) -> Section:
    """Zero-shot confusion matrices and per-class accuracy, and probe accuracies."""
    mods = _classified_modalities(ev)
    rows = [[m] + [ev.value(m, k) for k in CLASSIFICATION_COLUMNS] for m in mods]
    body = table_html(rows, ["modality", *CLASSIFICATION_COLUMNS])
    if ev.confusion:
        body += _confusion_html(ev)
    note = note_html(
        "Zero-shot: each item takes the class whose prompt embedding is most similar (confusion matrices: a row per true class, its share of items per predicted class). Probes are 5-fold cross-validated on frozen embeddings."
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
    if _classified_modalities(ev):
        sections.append(classification_section(ev))
    return sections


# --------------------------------------------------------------------------- training, examples


def read_metrics_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a run's ``metrics.jsonl`` (``modalign.io.read_jsonl``: a torn last line is dropped)."""
    from modalign.io import read_jsonl

    return read_jsonl(Path(path))


#: (key, title) of the training curves; ``lr`` is a field of the log, not a metric key.
TRAINING_PANELS = (
    (MetricKey("train", None, "loss").flatten(), "training loss"),
    (MetricKey("train", None, "temperature").flatten(), "temperature"),
    ("lr", "learning rate"),
)


def _plot_val_curves(ax: Axes, rows: list[dict[str, Any]], keys: list[str]) -> None:
    for k in keys:
        pts = [(r.get("step", i), r[k]) for i, r in enumerate(rows) if k in r]
        label = MetricKey.parse(k).subject
        assert isinstance(label, Direction)  # headline keys are directions
        ax.plot(*zip(*pts, strict=True), marker="o", ms=3, lw=1.5, label=label.label)
    ax.set(title="validation recall@1", xlabel="step", ylim=(0, 1))
    ax.legend(frameon=False, fontsize=8)


def training_section(metrics_jsonl: str | os.PathLike[str]) -> Section:
    """Training curves from a run's ``metrics.jsonl``: loss, temperature, learning rate, val metrics."""
    rows = read_metrics_jsonl(metrics_jsonl)
    val_keys = sorted(headline_keys({k for r in rows for k in r}, split="val"))
    panels = [(k, t) for k, t in TRAINING_PANELS if any(k in r for r in rows)]
    n = len(panels) + (1 if val_keys else 0)
    if n == 0:
        return Section("Training", note_html("No training metrics were logged."))
    fig, axes = subplots(n, (4.2 * n, 3.2))
    for ax, (key, title) in zip(axes, panels, strict=False):
        pts = [(r.get("step", i), r[key]) for i, r in enumerate(rows) if key in r]
        ax.plot(*zip(*pts, strict=True), lw=1.8)
        ax.set(title=title, xlabel="step")
    if val_keys:
        _plot_val_curves(axes[-1], rows, val_keys)
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


def baseline_section(metrics: dict[str, float], baselines: dict[str, dict[str, float]]) -> Section:
    """Test recall@1 of the trained model next to every baseline, per direction."""
    keys = sorted(headline_keys(metrics))
    header = ["direction", "trained", *baselines]
    rows = [
        [
            str(MetricKey.parse(k).subject),
            metrics[k],
            *(b.get(k, float("nan")) for b in baselines.values()),
        ]
        for k in keys
    ]
    return Section("Trained model vs baselines (test recall@1)", table_html(rows, header))
