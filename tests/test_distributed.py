"""Distributed helpers, and the engine under two real processes (torchrun, gloo, CPU)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from modalign import distributed
from modalign.losses.functional import info_nce_loss, siglip_loss

N_ROWS, N_IN, DIM = 11, 5, 6
SPLIT = [6, 5]  # unequal shards, as in a last batch
CASES = [
    (name, grouped) for name in ("infonce", "siglip", "plain_infonce") for grouped in (False, True)
]

# Run by torchrun in each process; builds the same data as `_setup` below and saves its results.
WORKER = textwrap.dedent(
    """
    import sys
    import torch
    import torch.nn.functional as F
    from modalign import distributed
    from modalign.losses import register_loss
    from modalign.losses.engine import pair_loss
    from modalign.losses.functional import info_nce_loss

    sys.path.insert(0, sys.argv[2])
    from test_distributed import CASES, SPLIT, _setup

    register_loss("plain_infonce")(info_nce_loss)  # a loss without a tiled kernel
    assert distributed.init_from_env(backend="gloo")
    rank = distributed.rank()
    start = sum(SPLIT[:rank])
    rows = slice(start, start + SPLIT[rank])
    out = {}
    for name, grouped in CASES:
        inputs_x, inputs_y, groups, params = _setup()
        x = F.normalize(params[0](inputs_x[rows]), dim=1)
        y = F.normalize(params[1](inputs_y[rows]), dim=1)
        g = groups[rows] if grouped else None
        loss = pair_loss(name, x, y, params[2], params[3], g, g, tile_size=4)
        loss.backward()
        flat = [*params[0].parameters(), *params[1].parameters(), params[2], params[3]]
        distributed.average_gradients(flat)
        out[(name, grouped)] = (distributed.all_reduce_mean(loss), [p.grad for p in flat])
    t = torch.full((rank + 2, 3), float(rank), requires_grad=True)
    gathered = distributed.all_gather(t, with_grad=True)
    (gathered * torch.arange(gathered.shape[0])[:, None]).sum().backward()
    out["gather"] = (gathered.detach(), t.grad)
    torch.save(out, sys.argv[1] + f"/rank{rank}.pt")
    distributed.shutdown()
    """
)


def _setup() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list]:  # type: ignore[type-arg]
    """Global inputs, group ids, two linear encoders, scale and bias: identical in every process."""
    g = torch.Generator().manual_seed(0)
    inputs_x = torch.randn(N_ROWS, N_IN, generator=g, dtype=torch.float64)
    inputs_y = inputs_x + 0.5 * torch.randn(N_ROWS, N_IN, generator=g, dtype=torch.float64)
    groups = torch.randint(0, 4, (N_ROWS,), generator=g)
    torch.manual_seed(1)
    enc_x, enc_y = torch.nn.Linear(N_IN, DIM).double(), torch.nn.Linear(N_IN, DIM).double()
    scale = torch.nn.Parameter(torch.tensor(4.0, dtype=torch.float64))
    bias = torch.nn.Parameter(torch.tensor(-2.0, dtype=torch.float64))
    return inputs_x, inputs_y, groups, [enc_x, enc_y, scale, bias]


def _reference(name: str, grouped: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    inputs_x, inputs_y, groups, params = _setup()
    x, y = F.normalize(params[0](inputs_x), dim=1), F.normalize(params[1](inputs_y), dim=1)
    g = groups if grouped else None
    fn = siglip_loss if name == "siglip" else info_nce_loss
    loss = fn(x, y, params[2], params[3], g, g)
    flat = [*params[0].parameters(), *params[1].parameters(), params[2], params[3]]
    grads = torch.autograd.grad(loss, flat, allow_unused=True, materialize_grads=True)
    return loss.detach(), list(grads)


def test_single_process_helpers_are_identities() -> None:
    t = torch.randn(3, 2, requires_grad=True)
    assert distributed.all_gather(t, with_grad=True) is t
    assert distributed.all_gather_sizes(3) == [3]
    assert not distributed.is_distributed()
    assert distributed.rank() == 0 and distributed.world_size() == 1
    assert distributed.init_from_env() is False


def test_rank_and_world_size_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert (distributed.rank(), distributed.world_size(), distributed.local_rank()) == (3, 4, 1)
    assert not distributed.is_distributed()  # no process group: gathers stay identities


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:  # type: ignore[type-arg]
    out = tmp_path_factory.mktemp("dist")
    script = out / "worker.py"
    script.write_text(WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    done = subprocess.run(
        [*cmd, str(script), str(out), str(Path(__file__).parent)],
        capture_output=True, text=True, timeout=300, env={**_env(), "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}


@pytest.mark.parametrize(("name", "grouped"), CASES)
def test_two_processes_equal_one_process(
    two_process_results: list[dict], name: str, grouped: bool
) -> None:  # type: ignore[type-arg]
    """Mean loss over processes and DDP-averaged gradients equal the concatenated batch's."""
    ref_loss, ref_grads = _reference(name, grouped)
    for result in two_process_results:
        loss, grads = result[(name, grouped)]
        torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=1e-12)
        for got, ref in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-12)


def test_all_gather_keeps_and_returns_gradients(two_process_results: list[dict]) -> None:  # type: ignore[type-arg]
    rows = torch.arange(5.0)  # rank 0 holds 2 rows (index 0-1), rank 1 holds 3 rows (2-4)
    for rank, result in enumerate(two_process_results):
        gathered, grad = result["gather"]
        assert gathered[:, 0].tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]
        mine = rows[:2] if rank == 0 else rows[2:]
        # Both processes backpropagate sum(i * row_i): the gradient of a row is summed twice.
        torch.testing.assert_close(grad, 2 * mine[:, None].expand(-1, 3))
