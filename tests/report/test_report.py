"""The report: each number lands in the right row and column, whatever the modalities are called."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from modalign.eval.suite import CENTERED, SplitEvaluation, evaluate_split
from modalign.report import (
    RetrievalExample,
    Section,
    evaluation_sections,
    examples_section,
    gap_section,
    retrieval_section,
    summary_lines,
    training_section,
    write_report,
)
from modalign.types import Direction, EmbeddingSet, Pair


class _Tables(HTMLParser):
    """Every <table> of a page as rows of cell texts (header row included)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: object) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self.cell is not None:
            self.tables[-1][-1].append("".join(self.cell))
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def tables(html: str) -> list[dict[str, dict[str, str]]]:
    """Each table as {first cell of a row: {column header: cell}}."""
    parser = _Tables()
    parser.feed(html)
    out = []
    for header, *rows in parser.tables:
        out.append({r[0]: dict(zip(header, r, strict=True)) for r in rows})
    return out


@pytest.fixture(scope="module")
def ev() -> SplitEvaluation:
    """Three modalities, one with an underscore, a modality gap, and directions that differ."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(60, 8))
    raw = {
        "image_hd": z + 0.6 * rng.normal(size=z.shape) + 3.0,  # offset: a modality gap
        "text": z + 0.3 * rng.normal(size=z.shape),
        "audio": z + 1.5 * rng.normal(size=z.shape),
    }
    emb = {
        k: (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32) for k, v in raw.items()
    }
    return evaluate_split(EmbeddingSet(emb, [str(i) for i in range(60)]), "test", n_boot=50)


def test_each_direction_s_numbers_land_in_its_own_row(ev: SplitEvaluation) -> None:
    (table,) = tables(retrieval_section(ev).html)
    assert len(table) == 6  # every ordered pair of three modalities
    r1 = {d: ev.value(d, "recall@1") for d in ev.retrieval}
    assert len({round(v, 3) for v in r1.values()}) >= 4  # distinct enough to catch mixed-up rows
    for d, value in r1.items():
        row = table[f"{d.query} → {d.gallery}"]
        assert row["recall@1"] == f"{value:.3f}"
        assert row["mrr"] == f"{ev.value(d, 'mrr'):.3f}"
        assert row["n_queries"] == "60"


def test_the_centred_column_is_the_centred_metric(ev: SplitEvaluation) -> None:
    gap_table, centring = tables(gap_section(ev).html)
    moved = 0
    for d in ev.retrieval:
        raw, centred = ev.value(d, "recall@1"), ev.value(d, "recall@1", CENTERED)
        row = centring[d.label]
        assert (row["recall@1"], row["recall@1 centred"]) == (f"{raw:.3f}", f"{centred:.3f}")
        assert row["change"] == f"{centred - raw:.3f}"
        moved += round(centred, 3) != round(raw, 3)
    assert moved  # centring changes something here, so a swapped column would show
    image_text = gap_table["image_hd vs text"]
    assert (
        image_text["centroid distance"]
        == f"{ev.value(Pair('image_hd', 'text'), 'modality_gap'):.3f}"
    )


def test_summary_names_modalities_with_underscores(ev: SplitEvaluation) -> None:
    lines = [text for _, text in summary_lines(ev)]
    d = Direction("image_hd", "text")
    first = f"image_hd → text: the right item comes first for {ev.value(d, 'recall@1'):.0%} of 60"
    assert any(line.startswith(first) for line in lines)
    assert any(line.startswith("Modality gap image_hd/text:") for line in lines)


def test_summary_against_a_hand_built_evaluation() -> None:
    ev = SplitEvaluation("test")
    a_b, b_a = Direction("a", "b"), Direction("b", "a")
    for d, raw, cen in ((a_b, 0.40, 0.55), (b_a, 0.30, 0.35)):
        ev.add(d, {"recall@1": raw, "recall@10": 0.9, "n_queries": 10, "n_gallery": 20})
        ev.add(d, {"recall@1": cen}, CENTERED)
    ev.add(Pair("a", "b"), {"modality_gap": 0.5, "gap_share": 0.1})
    ev.add(b_a, {"hubness_skew@10": 4.0, "antihub_share@10": 0.25})
    gap = [t for _, t in summary_lines(ev) if t.startswith("Modality gap")]
    assert gap == [
        "Modality gap a/b: centroids are 0.50 apart; a constant offset explains 10% of the "
        "distance between partners. Centring each modality changes mean recall@1 by +10.0%."
    ]
    kinds = dict((t.split(":")[0], k) for k, t in summary_lines(ev))
    assert kinds["Modality gap a/b"] == "bad"  # a gain of 10 points flags the gap
    assert kinds["Hubs in b → a"] == "bad" and "Hubs in a → b" not in kinds


def test_sections_and_page(ev: SplitEvaluation, tmp_path: Path) -> None:
    titles = [s.title for s in evaluation_sections(ev)]
    assert titles == [
        "Summary",
        "Retrieval",
        "Similarity distributions",
        "Modality gap",
        "Collapse and uniformity",
        "Hubness",
    ]
    write_report(tmp_path / "r.html", "Run <1>", [Section("Raw", "<p>x</p>")])
    page = (tmp_path / "r.html").read_text()
    assert "<h1>Run &lt;1&gt;</h1>" in page and "<h2>Raw</h2><p>x</p>" in page


def test_examples_frame_exactly_the_hits() -> None:
    thumb = np.linspace(0, 1, 16 * 16 * 3).reshape(16, 16, 3)
    ex = RetrievalExample(
        "a <red> ball",
        [(thumb, "ball", 0.81, True), (None, "missing", 0.2, False), (None, "b2", 0.1, True)],
    )
    body = examples_section([ex]).html
    assert body.count('class="item hit"') == 2 and body.count('class="item"') == 1
    assert "a &lt;red&gt; ball" in body and body.count("data:image/png;base64") == 1


def test_training_curves(tmp_path: Path) -> None:
    rows = [{"step": i, "train/loss": 3.0 / (i + 1), "lr": 1e-3} for i in range(5)]
    rows += [{"step": 4, "val/a_to_b/recall@1": 0.4, "val/a_to_b/recall@1~centered": 0.5}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{trunc")
    assert "data:image/png;base64" in training_section(tmp_path / "metrics.jsonl").html
    (tmp_path / "empty.jsonl").write_text('{"step": 0}\n')
    assert "No training metrics" in training_section(tmp_path / "empty.jsonl").html
