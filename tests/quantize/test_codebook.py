"""The shared codebook against plain numpy references (modalign.quantize.codebook)."""

from __future__ import annotations

import numpy as np
import torch

from modalign.quantize.codebook import (
    SharedCodebook,
    code_distribution,
    code_matching_loss,
    commitment_loss,
    ema_update,
    mix_targets,
    nearest_codes,
    perplexity,
    restart_dead_codes,
    usage_overlap,
)


def np_ema(count, weight, codes, targets, decay, eps):
    """VQ-VAE's EMA step written with loops."""
    L = len(count)
    count, weight = count.copy(), weight.copy()
    hits = np.zeros(L)
    sums = np.zeros_like(weight)
    for c, t in zip(codes, targets, strict=True):
        hits[c] += 1
        sums[c] += t
    count = decay * count + (1 - decay) * hits
    n = count.sum()
    count = (count + eps) / (n + L * eps) * n
    weight = decay * weight + (1 - decay) * sums
    return count, weight, weight / count[:, None]


def test_ema_update_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    count, weight = rng.uniform(0.5, 2, 6), rng.normal(size=(6, 3))
    codes, targets = rng.integers(0, 6, 20), rng.normal(size=(20, 3))
    got = ema_update(
        *(torch.tensor(a) for a in (count, weight, codes, targets)), decay=0.9, eps=1e-3
    )
    want = np_ema(count, weight, codes, targets, 0.9, 1e-3)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g.numpy(), w, rtol=1e-10)


def test_nearest_codes_matches_brute_force() -> None:
    rng = np.random.default_rng(1)
    x, book = rng.normal(size=(50, 4)), rng.normal(size=(9, 4))
    want = np.array([np.argmin([np.sum((r - e) ** 2) for e in book]) for r in x])
    np.testing.assert_array_equal(nearest_codes(torch.tensor(x), torch.tensor(book)).numpy(), want)


def test_multimodal_ema_step_matches_sequential_numpy_reference() -> None:
    """One training step: audio's codes move to 0.5 audio + 0.25 video + 0.25 text, then video's..."""
    torch.manual_seed(0)
    B, T, D, L = 3, 4, 2, 5
    z = {m: torch.randn(B, T, D) for m in ("audio", "video", "text")}
    book = SharedCodebook(L, D, decay=0.8, eps=1e-5, restart_after=0, init_from_data=False)
    count, weight = book.ema_count.numpy().copy(), book.ema_weight.numpy().copy().astype(np.float64)
    embedding = book.embedding.numpy().astype(np.float64)
    flat = {m: v.reshape(-1, D).numpy().astype(np.float64) for m, v in z.items()}
    codes = {m: np.array([np.argmin(((r - embedding) ** 2).sum(1)) for r in flat[m]]) for m in flat}
    for m in ("audio", "video", "text"):
        others = [o for o in flat if o != m]
        target = 0.5 * flat[m] + 0.25 * flat[others[0]] + 0.25 * flat[others[1]]
        count, weight, _ = np_ema(count, weight, codes[m], target, 0.8, 1e-5)
    book.train()
    out = book(z)
    for m in z:
        np.testing.assert_array_equal(out.codes[m].flatten().numpy(), codes[m])
    np.testing.assert_allclose(book.ema_count.numpy(), count, rtol=1e-5)
    np.testing.assert_allclose(
        book.embedding.numpy(), weight / count[:, None], rtol=1e-4, atol=1e-6
    )


def test_mix_targets_weights() -> None:
    own, a, b = torch.full((1, 1), 4.0), torch.full((1, 1), 2.0), torch.zeros(1, 1)
    assert float(mix_targets(own, [a, b], 0.5)) == 0.5 * 4 + 0.25 * 2


def test_commitment_matches_numpy() -> None:
    rng = np.random.default_rng(2)
    z = {m: rng.normal(size=(2, 3, 4)) for m in "abc"}
    q = {m: rng.normal(size=(2, 3, 4)) for m in "abc"}
    want = 0.0
    for m in "abc":
        own = np.mean((z[m] - q[m]) ** 2)
        cross = np.mean([np.mean((z[m] - q[o]) ** 2) for o in "abc" if o != m])
        want += 0.25 * (2 * own + cross)
    got = commitment_loss(
        {m: torch.tensor(v) for m, v in z.items()}, {m: torch.tensor(v) for m, v in q.items()}, 0.25
    )
    assert abs(float(got) - want) < 1e-10


def test_commitment_gradient_reaches_features_not_codes() -> None:
    z = torch.zeros(1, 2, 2, requires_grad=True)
    q = torch.ones(1, 2, 2, requires_grad=True)
    commitment_loss({"a": z}, {"a": q}, 0.25).backward()
    assert z.grad is not None and q.grad is None


def np_code_matching(za, zb, book):
    def dist(z):
        b, t, d = z.shape
        d2 = ((z.reshape(-1, 1, d) - book[None]) ** 2).sum(-1)
        e = np.exp(-np.sqrt(d2))
        return (e / e.sum(1, keepdims=True)).reshape(b, t, -1).mean(1)

    p, q = dist(za), dist(zb)
    B = len(p)
    s = np.array(
        [
            [p[i] @ np.log(q[j] + 1e-10) + q[j] @ np.log(p[i] + 1e-10) for j in range(B)]
            for i in range(B)
        ]
    )
    return float(np.mean([-(s[i, i] - np.log(np.exp(s[i]).sum())) for i in range(B)]))


def test_code_matching_matches_numpy() -> None:
    rng = np.random.default_rng(3)
    za, zb, book = rng.normal(size=(5, 3, 2)), rng.normal(size=(5, 3, 2)), rng.normal(size=(7, 2))
    tb = torch.tensor(book)
    got = code_matching_loss(
        code_distribution(torch.tensor(za), tb), code_distribution(torch.tensor(zb), tb)
    )
    assert abs(float(got) - np_code_matching(za, zb, book)) < 1e-8


def test_restart_replaces_only_dead_codes_with_active_ones() -> None:
    book = torch.arange(12.0).view(6, 2)
    unused = torch.tensor([0, 299, 300, 10, 0, 5])
    used = torch.tensor([0, 4, 0])
    new_book, new_unused, dead = restart_dead_codes(
        book, unused, used, after=300, noise=0.01, generator=torch.Generator().manual_seed(0)
    )
    assert dead.tolist() == [2]  # 300 + 1 exceeds 300; 299 + 1 does not yet
    assert new_unused.tolist() == [0, 300, 0, 11, 0, 6]
    # a used code (0 or 4) plus at most 0.01 of noise
    assert min(float((new_book[2] - book[j]).abs().max()) for j in (0, 4)) <= 0.01
    assert float((new_book[2] - book[2]).abs().max()) > 1
    assert torch.equal(new_book[[0, 1, 3, 4, 5]], book[[0, 1, 3, 4, 5]])


def test_codebook_restarts_a_code_that_stays_unused() -> None:
    torch.manual_seed(0)
    book = SharedCodebook(4, 2, restart_after=3, init_from_data=False)
    book.embedding.copy_(torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [50.0, 50.0]]))
    book.ema_weight.copy_(book.embedding * book.ema_count[:, None])
    book.train()
    for _ in range(4):
        book({"a": 0.05 * torch.randn(8, 2, 2), "b": 0.05 * torch.randn(8, 2, 2)})
    assert float(book.embedding[3].abs().max()) < 1.0  # moved next to the used codes
    # and the EMA sums agree with it, so the next step does not throw it back
    np.testing.assert_allclose(
        (book.ema_weight / book.ema_count[:, None]).numpy(),
        book.embedding.numpy(),
        rtol=1e-5,
        atol=1e-6,
    )


def test_perplexity_and_overlap_by_hand() -> None:
    assert abs(float(perplexity(torch.tensor([1, 1, 1, 1]), 5)) - 1.0) < 1e-6
    assert abs(float(perplexity(torch.tensor([0, 1]), 5)) - 2.0) < 1e-6
    assert usage_overlap(torch.tensor([0, 1, 2]), torch.tensor([2, 1, 1]), 4) == 2 / 3


def test_straight_through_gradient_is_identity() -> None:
    book = SharedCodebook(3, 2, init_from_data=False).eval()
    z = torch.randn(2, 3, 2, requires_grad=True)
    q, _ = book.quantize(z)
    q.sum().backward()
    assert z.grad is not None and torch.equal(z.grad, torch.ones_like(z))
