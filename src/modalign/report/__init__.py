"""Reports: self-contained HTML pages with embedded figures, tables and a plain-language summary.

``html`` holds the primitives (style, figures, tables, thumbnails, the page), ``sections`` one
builder per report section, ``summary`` the plain-language findings.
"""

from modalign.report.html import (
    PALETTE,
    Section,
    figure_html,
    image_html,
    note_html,
    render_report,
    subplots,
    table_html,
    write_report,
)
from modalign.report.sections import (
    RetrievalExample,
    baseline_section,
    classification_section,
    collapse_section,
    evaluation_sections,
    examples_section,
    gap_section,
    hubness_section,
    read_metrics_jsonl,
    retrieval_section,
    similarity_section,
    training_section,
)
from modalign.report.summary import summary_lines, summary_section

__all__ = [
    "PALETTE",
    "RetrievalExample",
    "Section",
    "baseline_section",
    "classification_section",
    "collapse_section",
    "evaluation_sections",
    "examples_section",
    "figure_html",
    "gap_section",
    "hubness_section",
    "image_html",
    "note_html",
    "read_metrics_jsonl",
    "render_report",
    "retrieval_section",
    "similarity_section",
    "subplots",
    "summary_lines",
    "summary_section",
    "table_html",
    "training_section",
    "write_report",
]
