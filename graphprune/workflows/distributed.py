"""One plan on every rank, for fine-tuning a pruned model under ``DistributedDataParallel``.

Every rank must build exactly the same smaller model, or DDP's parameter
broadcast and gradient all-reduce fail (or, worse, silently mix mismatched
tensors). A plan depends on the weights (importance scores) and possibly on
data (gradient-based criteria), which can differ between ranks. So the plan is
made once, on rank ``src``, and sent to the others as its JSON text in a
``uint8`` tensor (no pickle is ever loaded). Every rank then checks that the plan
fits its own copy of the model, and all ranks fail together if one does not,
rather than leaving the others waiting in a collective.

Typical use, after ``torch.distributed.init_process_group``::

    small = graphprune.distributed.shrink_distributed(model, 0.5, example_inputs=x)
    ddp = torch.nn.parallel.DistributedDataParallel(small)

:func:`check_same_plan` compares a hash of the plan across ranks, for plans made
independently on each rank (deterministic criteria on identical weights).
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..api import apply, plan
from ..base.errors import GraphPruneError, InputError, PlanError
from ..coupling import Scope
from ..measure import Hardware
from ..planning import Budget, Plan
from ..planning.importance import Importance
from ..rewrite import check_plan_fits

__all__ = ["broadcast_plan", "check_same_plan", "plan_on_all_ranks", "shrink_distributed", "sync_buffers"]


def _device(group: Any) -> torch.device:
    """Where collectives of this group take tensors: the current GPU for NCCL, the CPU otherwise."""
    if dist.get_backend(group) == dist.Backend.NCCL:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _require_initialized() -> None:
    if not (dist.is_available() and dist.is_initialized()):
        raise InputError("torch.distributed is not initialized",
                         hint="call torch.distributed.init_process_group(...) first (torchrun sets the environment)")


def broadcast_plan(the_plan: Plan | None, *, src: int = 0, group: Any = None) -> Plan:
    """Send rank ``src``'s plan to every rank of ``group``; the other ranks pass None. Returns the plan everywhere."""
    _require_initialized()
    device = _device(group)
    rank = dist.get_rank()
    if rank == src:
        if not isinstance(the_plan, Plan):
            raise InputError(f"rank {src} must pass the Plan to broadcast, got {type(the_plan).__name__}")
        payload = torch.frombuffer(bytearray(the_plan.to_json().encode()), dtype=torch.uint8).to(device)
        size = torch.tensor([payload.numel()], dtype=torch.int64, device=device)
    else:
        size = torch.zeros(1, dtype=torch.int64, device=device)
    dist.broadcast(size, src=src, group=group)
    if rank != src:
        payload = torch.empty(int(size.item()), dtype=torch.uint8, device=device)
    dist.broadcast(payload, src=src, group=group)
    return the_plan if rank == src else Plan.from_json(payload.cpu().numpy().tobytes().decode())


def _digest(the_plan: Plan) -> bytes:
    return hashlib.sha256(the_plan.to_json().encode()).digest()


def check_same_plan(the_plan: Plan, *, group: Any = None) -> str:
    """Raise :class:`PlanError` on every rank unless all ranks hold the same plan; returns its SHA-256 hex digest."""
    _require_initialized()
    device = _device(group)
    mine = torch.frombuffer(bytearray(_digest(the_plan)), dtype=torch.uint8).to(device)
    everyone = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(everyone, mine, group=group)
    differ = [r for r, d in enumerate(everyone) if not torch.equal(d, everyone[0])]
    if differ:
        raise PlanError(f"ranks {differ} hold a different plan than rank 0",
                        hint="make the plan once and broadcast it: graphprune.distributed.plan_on_all_ranks(...)")
    return mine.cpu().numpy().tobytes().hex()


def _all_ok(error: GraphPruneError | None, group: Any) -> None:
    """A collective verdict: if any rank failed, every rank raises, so none waits forever in a later collective."""
    flags = torch.zeros(dist.get_world_size(group), dtype=torch.int64, device=_device(group))
    flags[dist.get_rank(group)] = int(error is not None)
    dist.all_reduce(flags, group=group)
    if error is not None:
        raise error
    failed = flags.nonzero().flatten().tolist()
    if failed:
        raise PlanError(f"the plan does not fit the model on ranks {failed} (see their errors)",
                        hint="every rank must build the same architecture before pruning")


def plan_on_all_ranks(model: nn.Module, budget: float | Budget, *, src: int = 0, group: Any = None,
                      example_inputs: Any = None, importance: str | Importance = "l2", scope: Scope | None = None,
                      hardware: Hardware | None = None) -> Plan:
    """Plan on rank ``src`` (:func:`graphprune.plan` with these arguments), broadcast, and check it fits every rank."""
    _require_initialized()
    local: Plan | None = None
    error: GraphPruneError | None = None
    if dist.get_rank() == src:
        try:
            local = plan(model, budget, example_inputs=example_inputs, importance=importance, scope=scope,
                         hardware=hardware)
        except GraphPruneError as exc:
            error = exc
    _all_ok(error, group)  # rank src could not plan: nothing to broadcast
    the_plan = broadcast_plan(local, src=src, group=group)
    error = None
    try:
        check_plan_fits(model, the_plan)
    except GraphPruneError as exc:
        error = exc
    _all_ok(error, group)
    return the_plan


def shrink_distributed(model: nn.Module, budget: float | Budget, *, src: int = 0, group: Any = None,
                       example_inputs: Any = None, importance: str | Importance = "l2", scope: Scope | None = None,
                       hardware: Hardware | None = None, inplace: bool = False) -> nn.Module:
    """:func:`graphprune.shrink` with the plan made on rank ``src`` and applied identically on every rank."""
    the_plan = plan_on_all_ranks(model, budget, src=src, group=group, example_inputs=example_inputs,
                                 importance=importance, scope=scope, hardware=hardware)
    return apply(model, the_plan, example_inputs=example_inputs, scope=scope, inplace=inplace)


def sync_buffers(model: nn.Module, *, src: int = 0, group: Any = None) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) to every rank, in place.

    DDP keeps parameters identical, and broadcasts rank ``src``'s buffers before each forward; the
    last training forward still updates each rank's running statistics from its own batch. Call this
    before evaluating or saving, so every rank holds exactly the same model.
    """
    _require_initialized()
    device = _device(group)
    with torch.no_grad():
        for buffer in model.buffers():
            moved = buffer.detach().to(device)
            dist.broadcast(moved, src=src, group=group)
            buffer.copy_(moved)
