"""Optimisers that start as fast as the training they serve.

``torch.optim`` wraps ``Optimizer.add_param_group``, ``zero_grad``, ``state_dict`` and
``load_state_dict`` in ``torch._disable_dynamo`` and every ``step`` in a guard that runs
``import torch._dynamo``: constructing any optimiser, or taking its first step, imports
TorchDynamo (1.75 s on an idle 2-core machine, more than the rest of a small run's start-up).
Those wrappers only tell a running ``torch.compile`` to leave the method alone; no compilation
can be running before ``torch._dynamo`` is imported, so until then :class:`AdamW` calls the
undecorated methods directly, with the grad mode the step guard would set. Once anything has
imported dynamo, every call goes through torch's own wrappers again. The update is torch's own
(the fused kernel with ``fused=True``): results are identical bit for bit.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch.optim.optimizer import _use_grad_for_differentiable


def _dynamo_loaded() -> bool:
    return "torch._dynamo" in sys.modules


def _undecorated(method: Callable[..., Any]) -> Callable[..., Any]:
    """The function inside torch's decorators (``functools.wraps`` leaves ``__wrapped__``)."""
    return inspect.unwrap(method)


class AdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` that does not import ``torch._dynamo`` until something else does.

    Example:
        >>> w = torch.nn.Parameter(torch.ones(2, 2))
        >>> opt = AdamW([w], lr=0.1, fused=True)
        >>> w.grad = torch.ones(2, 2)
        >>> opt.step()
        >>> round(w[0, 0].item(), 4)  # one Adam step of lr 0.1, weight decay 0.01 * 0.1
        0.899
    """

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if _dynamo_loaded():
            return super().add_param_group(param_group)
        return _undecorated(torch.optim.Optimizer.add_param_group)(self, param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        if _dynamo_loaded():
            return super().zero_grad(set_to_none)
        return _undecorated(torch.optim.Optimizer.zero_grad)(self, set_to_none)

    def state_dict(self) -> dict[str, Any]:
        if _dynamo_loaded():
            return super().state_dict()
        return _undecorated(torch.optim.Optimizer.state_dict)(self)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if _dynamo_loaded():
            return super().load_state_dict(state_dict)
        return _undecorated(torch.optim.Optimizer.load_state_dict)(self, state_dict)

    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        update = _undecorated(torch.optim.AdamW.step)  # torch's step without its wrappers
        if _dynamo_loaded():  # torch's guard (its profiler and hooks wrap this method already)
            return _use_grad_for_differentiable(update)(self, closure)
        # what the guard does besides importing dynamo: no autograd graph for the update
        with torch.set_grad_enabled(bool(self.defaults["differentiable"])):
            return update(self, closure)
