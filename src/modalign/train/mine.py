"""Hard-negative mining: each row's nearest cross-modal neighbours outside its own group.

``modalign mine RUN --out negatives.csv`` embeds a run's train rows with its best weights and
writes, for every row, the ``k`` rows whose embeddings score highest against it across
modalities (the score of candidate c for row r is the largest ``<e_m[r], e_m'[c]>`` over the
modalities ``m != m'`` that r and c hold), never a row of r's own group: those are positives.
The next run reads the file as ``data.negatives`` and puts each row's negatives in its batch
(``modalign.data.samplers``).

Memory: rows are scored a chunk at a time against all candidates, O(chunk * N + N * D).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from modalign.types import EmbeddingSet

_SCORES_PER_CHUNK = 1 << 24  # floats of the (chunk, N) score block


@torch.no_grad()
def hardest_negatives(
    emb: EmbeddingSet, k: int, chunk_size: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` hardest cross-modal negatives of every row (never one of its group).

    Args:
        emb: N rows' embeddings in every modality (NaN rows where missing), with groups.
        k: negatives per row. chunk_size: rows scored at a time (default: a 16M-float block).

    Returns:
        ``(indices, scores)``, each (N, k); index -1 and score -inf where a row has fewer than
        ``k`` candidates.

    Example:
        >>> e = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]], dtype=np.float32)
        >>> s = EmbeddingSet({"a": e, "b": e}, ids=["x", "y", "z"], groups=np.array([0, 0, 1]))
        >>> hardest_negatives(s, k=1)[0].tolist()  # x's nearest, y, is its own group's
        [[2], [2], [1]]
    """
    n = len(emb)
    groups = torch.from_numpy(emb.group_ids())
    tensors = {m: torch.from_numpy(np.nan_to_num(x, nan=0.0)) for m, x in emb.embeddings.items()}
    present = {m: torch.from_numpy(emb.present(m)) for m in emb.modalities}
    chunk = chunk_size or max(1, _SCORES_PER_CHUNK // max(1, n))
    k_eff = min(k, n)
    idx = np.full((n, k), -1, dtype=np.int64)
    val = np.full((n, k), -math.inf, dtype=np.float32)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        scores = torch.full((stop - start, n), -math.inf)  # (c, N)
        for mq in emb.modalities:
            for mg in emb.modalities:
                if mq == mg:
                    continue
                s = tensors[mq][start:stop] @ tensors[mg].T  # (c, N)
                ok = present[mq][start:stop, None] & present[mg][None, :]
                scores = torch.maximum(scores, s.masked_fill(~ok, -math.inf))
        scores.masked_fill_(groups[start:stop, None] == groups[None, :], -math.inf)
        v, i = torch.topk(scores, k_eff, dim=1)  # (c, k)
        i[torch.isinf(v)] = -1
        idx[start:stop, :k_eff], val[start:stop, :k_eff] = i.numpy(), v.numpy()
    return idx, val
