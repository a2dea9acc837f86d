"""``modalign search INDEX --text ... | --file ... | --id ...``: query an index from any modality."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "search",
        help="search an index with a text, a file or an indexed item's id",
        description="Embeds the query with the run the index was built with (text and file "
        "queries; --id needs no model) and prints the k best items, best first.",
    )
    p.add_argument("index", help="index folder")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--text", help="a text query")
    what.add_argument("--file", help="an image or sound file as the query")
    what.add_argument("--id", dest="item_id", help="the id of an indexed item as the query")
    p.add_argument("--modality", help="only results of this modality (e.g. image)")
    p.add_argument("--file-modality", help="the modality of --file (default: from the model)")
    p.add_argument("--k", type=int, default=10, help="number of results (default 10)")
    p.add_argument("--json", action="store_true", help="one JSON object per result")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from modalign.index.query import Query, load_encoder, search_query
    from modalign.index.store import Index

    index = Index.load(args.index)
    encoder = load_encoder(index) if args.item_id is None else None
    query = Query(text=args.text, file=args.file, item_id=args.item_id, modality=args.file_modality)
    hits = search_query(index, encoder, query, k=args.k, modality=args.modality)
    rows = [
        {
            "rank": r,
            "id": h.id,
            "modality": h.modality,
            "score": round(h.score, 4),
            "metadata": index.items[h.id].metadata,
        }
        for r, h in enumerate(hits, 1)
    ]
    if args.json:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
    else:
        print(format_table(rows))
    return 0


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table: rank, score, modality, id and the caption or source.

    Example:
        >>> print(format_table([{"rank": 1, "id": "a", "modality": "image", "score": 0.5,
        ...                      "metadata": {"caption": "a cat"}}]))
        rank  score   modality  id  caption / source
           1  0.5000  image     a   a cat
    """
    head = ("rank", "score", "modality", "id", "caption / source")
    cells = [
        (
            str(r["rank"]),
            f"{r['score']:.4f}",
            r["modality"],
            r["id"],
            str(r["metadata"].get("caption") or r["metadata"].get("source") or ""),
        )
        for r in rows
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *cells, strict=True)]
    lines = []
    for row in [head, *cells]:
        parts = [row[0].rjust(widths[0]), row[1].ljust(widths[1])] + [
            c.ljust(w) for c, w in zip(row[2:], widths[2:], strict=True)
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)
