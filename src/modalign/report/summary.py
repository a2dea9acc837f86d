"""The plain-language summary of an evaluation: one sentence per finding, marked good or bad.

Example:
    >>> from modalign.types import Pair
    >>> ev = SplitEvaluation("test")
    >>> ev.add(Pair("a", "b"), {"modality_gap": 0.9, "gap_share": 0.6})
    >>> summary_lines(ev)
    [('bad', 'Modality gap a/b: centroids are 0.90 apart; a constant offset explains 60% of the distance between partners.')]
"""

from __future__ import annotations

import html

import numpy as np

from modalign.eval.suite import CENTERED, SplitEvaluation
from modalign.report.html import Section
from modalign.types import Direction, Pair

#: (kind, sentence); kind is ``good``, ``bad`` or ``info``.
Line = tuple[str, str]


def summary_lines(ev: SplitEvaluation) -> list[Line]:
    """Plain-language findings as (kind, sentence); kind is ``good``, ``bad`` or ``info``."""
    out = [_retrieval_line(ev, d) for d in ev.retrieval]
    out += _gap_lines(ev) + _similarity_lines(ev) + _hub_lines(ev)
    out += [("bad", w[0].upper() + w[1:] + ".") for w in ev.warnings]
    return out


def _retrieval_line(ev: SplitEvaluation, d: Direction) -> Line:
    r1, r10 = ev.value(d, "recall@1"), ev.value(d, "recall@10")
    n = int(ev.value(d, "n_queries"))
    lo, hi = ev.interval(d, "recall@1")
    chance = 1.0 / max(ev.value(d, "n_gallery"), 1.0)
    kind = "good" if r1 >= 0.5 else "bad" if r10 < 0.5 else "info"
    return (
        kind,
        f"{d.query} → {d.gallery}: the right item comes first for {r1:.0%} of {n:,} queries "
        f"(95% interval {lo:.0%}–{hi:.0%}; chance ≈ {chance:.2%}) and is in the top 10 for {r10:.0%}.",
    )


def _gap_lines(ev: SplitEvaluation) -> list[Line]:
    out = []
    for pair in ev.subjects("modality_gap", Pair):
        gap, share = ev.value(pair, "modality_gap"), ev.value(pair, "gap_share")
        text = f"Modality gap {pair.a}/{pair.b}: centroids are {gap:.2f} apart; a constant offset explains {share:.0%} of the distance between partners."
        gain = centering_gain(ev, pair)
        if gain is not None:
            text += f" Centring each modality changes mean recall@1 by {gain:+.1%}."
        out.append(("bad" if share > 0.3 or (gain or 0) > 0.02 else "info", text))
    return out


def centering_gain(ev: SplitEvaluation, pair: Pair) -> float | None:
    """Mean change of recall@1 over both directions of ``pair`` after mean centring (or None)."""
    raw = [ev.value(d, "recall@1") for d in pair.directions()]
    cen = [ev.value(d, "recall@1", CENTERED) for d in pair.directions()]
    diffs = [c - r for c, r in zip(cen, raw, strict=True) if not (np.isnan(c) or np.isnan(r))]
    return float(np.mean(diffs)) if diffs else None


def _similarity_lines(ev: SplitEvaluation) -> list[Line]:
    out = []
    for p in ev.subjects("alignment_score", Pair):
        score, overlap = ev.value(p, "alignment_score"), ev.value(p, "sim_overlap")
        kind = "good" if overlap < 0.2 else "bad" if overlap > 0.5 else "info"
        out.append(
            (
                kind,
                f"{p.a}/{p.b}: positives score {ev.value(p, 'pos_sim_mean'):.2f} on average and "
                f"negatives {ev.value(p, 'neg_sim_mean'):.2f} (alignment score {score:.1f}); the two distributions overlap by {overlap:.0%}.",
            )
        )
    return out


def _hub_lines(ev: SplitEvaluation) -> list[Line]:
    out = []
    for d in ev.subjects("hubness_skew@10", Direction):
        skew = ev.value(d, "hubness_skew@10")
        if skew > 3:
            anti = ev.value(d, "antihub_share@10")
            out.append(
                (
                    "bad",
                    f"Hubs in {d.label}: k-occurrence skewness {skew:.1f}; a few gallery items crowd many top-10 lists and {anti:.0%} appear in none.",
                )
            )
    return out


def summary_section(ev: SplitEvaluation) -> Section:
    """The plain-language findings as a bulleted list."""
    items = "".join(f'<li class="{k}">{html.escape(t)}</li>' for k, t in summary_lines(ev))
    return Section("Summary", f'<ul class="summary">{items}</ul>')
