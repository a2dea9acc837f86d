"""modalign's AdamW: torch's fused update without importing torch._dynamo."""

from __future__ import annotations

import subprocess
import sys

import torch

from modalign.train.optim import AdamW


def _groups(params: list[torch.nn.Parameter]) -> list[dict[str, object]]:
    return [
        {"params": params[:1], "weight_decay": 0.1},
        {"params": params[1:], "weight_decay": 0.0},
    ]


def test_updates_and_state_equal_torch_fused_adamw_bit_for_bit() -> None:
    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(7, 5)), torch.nn.Parameter(torch.randn(5))]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    a = AdamW(_groups(ours), lr=1e-2, fused=True)
    b = torch.optim.AdamW(_groups(ref), lr=1e-2, fused=True)
    for step in range(6):
        for p, q in zip(ours, ref, strict=True):
            p.grad = torch.sin(p.detach() * (step + 1))
            q.grad = torch.sin(q.detach() * (step + 1))
        a.step()
        b.step()
        a.zero_grad()
        b.zero_grad()
    assert all(torch.equal(p, q) for p, q in zip(ours, ref, strict=True))
    assert all(p.grad is None for p in ours)
    # a resumed optimiser continues identically
    c = AdamW(_groups([torch.nn.Parameter(p.detach().clone()) for p in ours]), lr=1e-2, fused=True)
    c.load_state_dict(a.state_dict())
    assert str(c.state_dict()) == str(b.state_dict())


def test_constructing_and_stepping_does_not_import_dynamo() -> None:
    code = (
        "import sys, torch\n"
        "from modalign.train.optim import AdamW\n"
        "p = torch.nn.Parameter(torch.ones(3))\n"
        "opt = AdamW([p], lr=0.1, fused=True)\n"
        "p.grad = torch.ones(3); opt.step(); opt.zero_grad(); opt.state_dict()\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
