"""HTML primitives of a self-contained report: style, figures, tables, thumbnails, the page.

A report is a title and a list of :class:`Section` (a heading and an HTML body). Figures are
matplotlib figures embedded as base64 PNGs, so the file has no external assets and can be mailed
or archived as is. The section builders live in :mod:`modalign.report.sections`, the
plain-language summary in :mod:`modalign.report.summary`; other code (the demo, training) adds
its own sections with :func:`figure_html`, :func:`table_html` and :func:`image_html`.

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
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib
import numpy as np
from cycler import cycler
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter, LogFormatterSciNotation

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


def panel_figure(
    size: tuple[float, float], rects: Sequence[tuple[float, float, float, float]]
) -> tuple[Figure, list[Axes]]:
    """A figure of ``size`` inches with one axes per rectangle, in the report's style.

    Args:
        size: (width, height) in inches.
        rects: (left, bottom, width, height) of each axes, in inches from the bottom left corner
            (margins computed by the caller, e.g. from :func:`text_width`: no layout engine).

    Example:
        >>> fig, (ax,) = panel_figure((4, 3), [(0.5, 0.5, 3, 2)])
        >>> [round(float(v), 3) for v in ax.get_position().bounds]
        [0.125, 0.167, 0.75, 0.667]
    """
    width, height = size
    with matplotlib.rc_context(STYLE):  # type: ignore[arg-type]
        fig = Figure(figsize=size)
        axes = [
            fig.add_axes((x / width, y / height, w / width, h / height)) for x, y, w, h in rects
        ]
    return fig, axes


def text_width(labels: Sequence[str], points: float | None = None) -> float:
    """Width in inches of the widest of ``labels`` at ``points`` (default: the report's font
    size), measured on the font itself without drawing anything.

    Example:
        >>> text_width(["ab", "abcd"]) > text_width(["abc"]) > 0, text_width([])
        (True, 0.0)
    """
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import text_to_path

    if not labels:
        return 0.0
    with matplotlib.rc_context(STYLE):  # type: ignore[arg-type]
        prop = FontProperties(size=points or STYLE["font.size"])
    widths = [text_to_path.get_text_width_height_descent(s, prop, ismath=False)[0] for s in labels]
    return max(widths) / 72.0


@dataclass(frozen=True)
class Section:
    """One part of a report: a heading and its HTML body (already escaped where needed)."""

    title: str
    html: str


class PlainLogFormatter(LogFormatter):
    """Log-axis tick labels as plain numbers (``0.01``, ``100``, ``1e+05``), not typeset powers.

    matplotlib's default labels log axes with mathtext (``$10^{2}$``), whose parser is built on
    first use: 0.15 s, a tenth of a small evaluation's report. Which ticks get a label (decades
    only, or minor ticks too on a short axis) is the default's rule.

    Example:
        >>> PlainLogFormatter()._num_to_string(0.01, 0.001, 1.0), PlainLogFormatter()._num_to_string(100.0, 1, 1e3)
        ('0.01', '100')
    """

    def _num_to_string(self, x: float, vmin: float, vmax: float) -> str:
        return f"{x:g}"


def _plain_log_labels(fig: Figure) -> None:
    """Swap the default (mathtext) tick labels of every log axis of ``fig`` for plain numbers."""
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            if axis.get_scale() == "log" and isinstance(
                axis.get_major_formatter(), LogFormatterSciNotation
            ):
                axis.set_major_formatter(PlainLogFormatter())
                axis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False))


def figure_html(fig: Figure, alt: str = "") -> str:
    """Embed a matplotlib figure as a base64 PNG ``<img>`` and close it.

    Log axes are labelled with plain numbers (:class:`PlainLogFormatter`).
    """
    _plain_log_labels(fig)
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


def note_html(text: str) -> str:
    """A short explanatory paragraph (escaped)."""
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
