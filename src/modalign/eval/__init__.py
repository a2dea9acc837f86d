"""Evaluation: exact streamed retrieval metrics, zero-shot, probes, diagnostics, reports.

The functions here are pure: embeddings in, metrics (or per-query arrays) out. Metrics are
named by :class:`modalign.types.MetricKey` (flat form e.g. ``test/image_to_text/recall@1``).
"""

from modalign.eval.retrieval import (
    PerQueryRetrieval,
    evaluate_retrieval,
    evaluate_retrieval_per_query,
    retrieval_metrics,
    retrieval_per_query,
    summarize_retrieval,
    top_k,
    unique_present_rows,
)

__all__ = [
    "PerQueryRetrieval",
    "evaluate_retrieval",
    "evaluate_retrieval_per_query",
    "retrieval_metrics",
    "retrieval_per_query",
    "summarize_retrieval",
    "top_k",
    "unique_present_rows",
]
