"""Gradient caching: contrastive batches far larger than the encoders' activations allow.

A contrastive loss couples every row of the batch, so the batch cannot simply be split into
gradient-accumulation steps. Gradient caching (Gao et al., 2021) splits the *encoder* work
instead; the loss still sees the whole batch:

1. embed every chunk without an autograd graph (activations of one chunk at a time);
2. compute the loss on the concatenated embeddings and its gradient with respect to them
   (the embeddings are leaves, so this backward pass stops there; it also reaches parameters
   used inside the loss, such as the temperature);
3. re-embed each chunk *with* a graph and backpropagate the cached slice of the gradient.

By the chain rule, step 3 adds up exactly the full-batch parameter gradient. Dropout and other
random layers must draw the same numbers in steps 1 and 3, so the random number generator state
(CPU and every initialised CUDA device) is recorded before each chunk in step 1 and replayed in
step 3, as ``torch.utils.checkpoint`` does; afterwards the generators are where a single pass
would have left them.

Memory: the embeddings of the whole batch plus the activations of one chunk. Compute: the
encoders run twice (about 1.3-1.5x the cost of one forward and backward).

References:
    Gao, Zhang, Han and Callan, 2021, "Scaling Deep Contrastive Learning Batch Size under Memory
    Limited Setup" (GradCache). sentence-transformers ``CachedMultipleNegativesRankingLoss``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor

C = TypeVar("C")


@dataclass(frozen=True)
class RngState:
    """Generator states to replay: the CPU generator and every initialised CUDA device."""

    cpu: Tensor
    cuda: list[Tensor]


def capture_rng() -> RngState:
    """Record the current random number generator states.

    Example:
        >>> state = capture_rng()
        >>> a = torch.rand(2)
        >>> with replay_rng(state):
        ...     b = torch.rand(2)
        >>> torch.equal(a, b)
        True
    """
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
    return RngState(torch.get_rng_state(), cuda)


@contextmanager
def replay_rng(state: RngState) -> Iterator[None]:
    """Run the block with the generators set to ``state``, then restore the current states."""
    with torch.random.fork_rng(devices=list(range(len(state.cuda)))):
        torch.set_rng_state(state.cpu)
        if state.cuda:
            torch.cuda.set_rng_state_all(state.cuda)
        yield


def _concat(outputs: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Per key, the chunks' tensors concatenated in chunk order, as fresh autograd leaves."""
    keys = list(dict.fromkeys(k for out in outputs for k in out))
    cat = {k: torch.cat([out[k] for out in outputs if k in out]) for k in keys}  # (N_k, D)
    return {k: v.requires_grad_(v.is_floating_point()) for k, v in cat.items()}


def _split_grads(
    emb: dict[str, Tensor], outputs: Sequence[Mapping[str, Tensor]]
) -> list[dict[str, Tensor]]:
    """The cached gradient of each embedding, cut back into the chunks' pieces."""
    per_chunk: list[dict[str, Tensor]] = [{} for _ in outputs]
    for key, leaf in emb.items():
        if leaf.grad is None:
            continue  # the loss did not use this key
        pieces = [out[key] for out in outputs if key in out]
        grads = iter(leaf.grad.split([p.shape[0] for p in pieces]))
        for i, out in enumerate(outputs):
            if key in out:
                per_chunk[i][key] = next(grads)
    return per_chunk


def gradcache_step(
    encode: Callable[[C], Mapping[str, Tensor]],
    chunks: Sequence[C],
    loss_fn: Callable[[dict[str, Tensor]], Tensor],
) -> Tensor:
    """One gradient-cached forward and backward pass over a batch given as chunks.

    Accumulates into the ``.grad`` of every parameter the encoders and the loss use exactly the
    gradient of ``loss_fn`` on the whole batch; the caller then steps the optimiser (under data
    parallelism, after ``modalign.distributed.average_gradients``).

    Args:
        encode: embeds one chunk; returns ``{key: (n_key, D) embeddings}``. A chunk may lack some
            keys (rows without that modality); keys are concatenated over chunks in chunk order.
        chunks: the batch, cut so that one chunk's activations fit in memory.
        loss_fn: maps ``{key: (N_key, D)}`` (all chunks, concatenated in chunk order) to a 0-d
            loss. The caller knows which rows those are: it cut the chunks.

    Returns:
        The loss, detached.

    Example:
        >>> enc = torch.nn.Linear(3, 2)
        >>> chunks = [torch.randn(4, 3), torch.randn(2, 3)]
        >>> loss = gradcache_step(lambda c: {"a": enc(c)}, chunks, lambda e: e["a"].pow(2).sum())
        >>> full = enc(torch.cat(chunks)).pow(2).sum()
        >>> g = enc.weight.grad.clone(); enc.zero_grad(); full.backward()
        >>> torch.allclose(g, enc.weight.grad), torch.allclose(loss, full)
        (True, True)

    References:
        Gao et al., 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited
        Setup".
    """
    states, outputs = [], []
    for chunk in chunks:  # 1. embed without a graph, remembering the generators
        states.append(capture_rng())
        with torch.no_grad():
            outputs.append({k: v.detach() for k, v in encode(chunk).items()})
    emb = _concat(outputs)
    with torch.enable_grad():  # 2. loss and d loss / d embeddings (stops at the leaves)
        loss = loss_fn(emb)
        loss.backward()
    cached = _split_grads(emb, outputs)
    del emb, outputs
    for chunk, state, grads in zip(chunks, states, cached, strict=True):  # 3. replay with a graph
        if not grads:
            continue
        with replay_rng(state), torch.enable_grad():
            out = encode(chunk)
            pairs = [(out[k], g) for k, g in grads.items() if out[k].requires_grad]
            if pairs:
                torch.autograd.backward([t for t, _ in pairs], [g for _, g in pairs])
    return loss.detach()
