"""Evaluation: exact streamed retrieval metrics, zero-shot, probes, diagnostics, reports.

The functions here are pure: embeddings in, ``dict[str, float]`` (or per-query arrays) out.
Metric keys follow one scheme: ``{split}/{query}_to_{gallery}/{metric}``, e.g.
``test/image_to_text/recall@1``.
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
