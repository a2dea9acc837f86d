"""Figure layout without a layout engine: confusion panels fit, log axes carry plain labels."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from modalign.eval.suite import SplitEvaluation
from modalign.report.html import figure_html, subplots, text_width
from modalign.report.sections import (
    CONFUSION_WIDTH,
    _confusion_layout,
    classification_section,
)


def _inside(rect: tuple[float, ...], size: tuple[float, float]) -> bool:
    x, y, w, h = rect
    return x >= 0 and y >= 0 and x + w <= size[0] + 1e-9 and y + h <= size[1] + 1e-9


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


@pytest.mark.parametrize(
    ("panels", "side", "names", "rows"),
    [(1, 1.5, 0.4, 1), (3, 3.5, 1.8, 1), (4, 3.5, 1.8, 2), (5, 8.0, 0.6, 5)],
)
def test_confusion_panels_fit_and_leave_room_for_the_names(panels, side, names, rows):
    size, rects, bar = _confusion_layout(panels, side, names)
    assert len(rects) == panels
    assert all(_inside(r, size) for r in [*rects, bar])
    assert not any(_overlap(a, b) for a, b in itertools.combinations([*rects, bar], 2))
    assert min(r[0] for r in rects) >= names  # the row names fit on the left
    assert min(r[1] for r in rects) >= 0.87 * names  # the rotated column names fit below
    assert len({r[1] for r in rects}) == rows  # wrapped into rows when too wide
    assert size[0] <= CONFUSION_WIDTH or rows == panels


def test_text_width_grows_with_the_text():
    short, long = text_width(["cat"]), text_width(["cat", "a much longer class name"])
    assert 0 < short < long < 3


def test_classification_section_draws_all_modalities_in_one_figure():
    ev = SplitEvaluation("test")
    ev.class_names = ["cat", "dog", "a rather long class name"]
    y = np.array([0, 1, 2, 2])
    for m in ("image", "text"):
        ev.confusion[m] = (y, np.array([0, 1, 1, 2]))
        ev.add(m, {"zero_shot_top1": 0.75})
    html = classification_section(ev).html
    assert html.count("<img") == 1 and 'alt="zero-shot confusion image, text"' in html


def test_log_axes_get_plain_tick_labels():
    fig, (ax,) = subplots(1)
    ax.plot([1, 300], [0.002, 1])
    ax.set(xscale="log", yscale="log")
    figure_html(fig)
    labels = [t.get_text() for t in ax.get_xticklabels() + ax.get_yticklabels() if t.get_text()]
    assert {"1", "10", "100", "0.01", "0.1"} <= set(labels)
    assert not any("$" in t for t in labels)  # no mathtext (its parser costs 0.15 s to build)
