"""Importance criteria: score every channel of a coupled group.

A scorer takes a :class:`~graphprune.coupling.ChannelGroup` and a mapping from
tensor names to tensors, and returns one float per channel of the group; the
lowest-scoring channels are removed first. A channel's score aggregates every
member of its group: the producers' output filters, the consumers' input
slices and the norm scales, so a channel that feeds a large weight elsewhere is
not removed just because its own filter is small.

Criteria that need data (:class:`Taylor`, :class:`Activation`) are bound to the
traced model first: :meth:`Criterion.bind` runs the calibration batches once and
returns a plain scorer. Any ``callable(group, tensors) -> scores`` works too.

>>> import numpy as np, torch
>>> from graphprune.coupling import ChannelGroup, GroupMember, TensorUse, Role
>>> w = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]])
>>> use = TensorUse("conv.weight", 0, np.arange(3), Role.PRODUCER, "conv")
>>> group = ChannelGroup(0, 3, np.arange(3), [GroupMember(use, np.arange(3), np.arange(3))], np.zeros(3, bool), ["conv"])
>>> l2(group, {"conv.weight": w}).tolist()
[5.0, 0.0, 1.0]
>>> Magnitude(p=1, reduce="max")(group, {"conv.weight": w}).tolist()
[7.0, 0.0, 1.0]
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..base.errors import InputError, PlanError
from ..base.running import call_model, eval_mode
from ..coupling import META_KEY, ChannelGroup, GroupMember, Role

if TYPE_CHECKING:
    from ..coupling import Coupling

__all__ = [
    "Importance", "Criterion", "Magnitude", "BNScale", "FPGM", "Taylor", "Activation", "Random",
    "l1", "l2", "slice_norms", "slice_powers", "resolve_importance", "bind_importance", "IMPORTANCE_NAMES", "REDUCTIONS", "NORMALIZERS",
]

Importance = Callable[[ChannelGroup, Mapping[str, torch.Tensor]], np.ndarray]

REDUCTIONS = ("mean", "sum", "max")
NORMALIZERS = (None, "mean", "max", "sum")


def _check_choice(value: Any, choices: tuple[Any, ...], what: str) -> None:
    if value not in choices:
        raise InputError(f"unknown {what} {value!r}", hint=f"use one of {list(choices)}")


@dataclass(frozen=True, kw_only=True)
class Criterion(abc.ABC):
    """Base of the built-in criteria: per-member channel scores, normalised, then reduced over members.

    ``reduce`` combines a channel's scores from the group's members (``mean``, ``sum``, ``max``);
    ``normalize`` divides each member's scores by their ``mean``, ``max`` or ``sum`` first, so a
    layer with large weights does not dominate its group.
    """

    reduce: str = "mean"
    normalize: str | None = None

    def __post_init__(self) -> None:
        _check_choice(self.reduce, REDUCTIONS, "reduction")
        _check_choice(self.normalize, NORMALIZERS, "normalisation")

    @property
    def name(self) -> str:
        return type(self).__name__.lower()

    def describe(self) -> str:
        """What the plan records: the criterion and its options."""
        return f"{self.name}(reduce={self.reduce}, normalize={self.normalize})"

    @abc.abstractmethod
    def member_scores(self, group: ChannelGroup, tensors: Mapping[str, torch.Tensor]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(scores, covered) per member: a score per channel, and which channels the member touches."""

    def bind(self, coupling: Coupling) -> Importance:
        """A scorer for this coupling; data-driven criteria run their calibration here."""
        return self

    def __call__(self, group: ChannelGroup, tensors: Mapping[str, torch.Tensor]) -> np.ndarray:
        rows = self.member_scores(group, tensors)
        if not rows:
            raise PlanError(f"{self.describe()} found nothing to score in the group of {', '.join(group.sources[:3])}")
        return _reduce(rows, self.reduce, self.normalize)


def _reduce(rows: list[tuple[np.ndarray, np.ndarray]], reduce: str, normalize: str | None) -> np.ndarray:
    """A channel's score from its members' rows: each row normalised over the channels it covers, then the
    rows combined, all in one array (a few numpy calls per group, not several per member)."""
    covered = np.stack([c for _, c in rows])
    scores = np.where(covered, np.stack([s for s, _ in rows]), 0.0)
    if normalize is not None:
        n = covered.sum(axis=1)
        if normalize == "max":
            scale = np.where(covered, scores, -np.inf).max(axis=1)
        else:
            scale = scores.sum(axis=1)
            if normalize == "mean":
                scale = scale / np.maximum(n, 1)
        scale = np.where((n > 0) & (scale > 0), scale, 1.0)
        scores = scores / scale[:, None]
    if reduce == "max":
        return np.where(covered, scores, -np.inf).max(axis=0).clip(min=0.0)
    total = scores.sum(axis=0)
    if reduce == "sum":
        return total
    return total / np.maximum(covered.sum(axis=0), 1)


def _per_channel(member: GroupMember, per_position: np.ndarray, size: int, combine: str) -> tuple[np.ndarray, np.ndarray]:
    """Fold per-position values of a member into per-channel values (a channel may span positions)."""
    if member.whole:  # positions are the channels, in order
        return per_position, np.ones(size, dtype=bool)
    values = per_position[member.positions]
    counts = np.bincount(member.channels, minlength=size)
    if combine == "sum":
        out = np.bincount(member.channels, weights=values, minlength=size)
    else:  # max
        out = np.zeros(size)
        np.maximum.at(out, member.channels, values)
    return out, counts > 0


def slice_norms(tensor: torch.Tensor, dim: int, p: int = 2, *, chunk: int = 1 << 22) -> np.ndarray:
    """The Lp norm of each slice of ``tensor`` along ``dim`` (over every other dim), in float64.

    >>> w = torch.tensor([[3.0, 1.0], [4.0, 0.0]])
    >>> slice_norms(w, 0).round(4).tolist(), slice_norms(w, 1).tolist(), slice_norms(w, 1, p=1).tolist()
    ([3.1623, 4.0], [5.0, 1.0], [7.0, 1.0])
    """
    return slice_powers(tensor, dim, p, chunk=chunk) ** (1.0 / p)


def slice_powers(tensor: torch.Tensor, dim: int, p: int = 2, *, chunk: int = 1 << 22) -> np.ndarray:
    """The sum of ``|x| ** p`` over each slice of ``tensor`` along ``dim``, in float64: :func:`slice_norms`
    before its root, which a criterion summing a channel's slices needs as it is.

    The tensor is viewed as (before, dim, after). A float32 or float64 CPU tensor is reduced in numpy
    (:func:`_powers_in_numpy`). Otherwise it is reduced over ``after`` first, the contiguous dims, then over
    ``before`` by a matrix product, a chunk of at most ``chunk`` entries at a time: a norm straight over the
    leading dims (a classifier's input columns) is twenty times slower, and converting the whole tensor to
    float32 at once would copy a large weight.

    >>> slice_powers(torch.tensor([[3.0, 1.0], [4.0, 0.0]]), 1).tolist()
    [25.0, 1.0]
    """
    t = tensor.detach()
    shape = t.shape or (1,)
    n = shape[dim]
    before, after = math.prod(shape[:dim]), math.prod(shape[dim + 1:])
    if t.is_cpu and t.dtype in (torch.float32, torch.float64) and (p == 2 or t.numel() <= chunk):
        return _powers_in_numpy(t.numpy().reshape(before, n, after), p)
    t3 = t.reshape(before, n, after)
    if before == 1:  # a producer's rows: one contiguous reduction
        return torch.linalg.vector_norm(t3[0].float(), ord=p, dim=1).double().pow(p).cpu().numpy()
    rows = max(1, chunk // max(n * after, 1))
    total = torch.zeros(n, dtype=torch.float64, device=t.device)
    for start in range(0, before, rows):
        part = t3[start:start + rows].float()
        if after > 1:
            powered = torch.linalg.vector_norm(part, ord=p, dim=2).pow(p)
        else:  # one pass over the entries, not two
            powered = part[..., 0].square() if p == 2 else part[..., 0].abs().pow(p)
        total += (torch.ones(1, powered.shape[0], device=t.device) @ powered)[0].double()
    return total.cpu().numpy()


def _powers_in_numpy(a: np.ndarray, p: int) -> np.ndarray:
    """:func:`slice_powers` of a CPU weight viewed as (before, n, after), in numpy: a call there costs a few
    microseconds where torch's dispatch costs tens, and its sums of squares need no squared copy."""
    before, n, after = a.shape
    rows = a[0] if before == 1 else a.reshape(before, n * after)
    if p == 2:
        sums = np.einsum("ij,ij->i", rows, rows) if before == 1 else np.einsum("ij,ij->j", rows, rows)
    else:
        powered = np.abs(rows) if p == 1 else np.abs(rows) ** p
        sums = powered.sum(axis=1 if before == 1 else 0)
    if before > 1 and after > 1:
        sums = sums.reshape(n, after).sum(axis=1)
    return sums.astype(np.float64)


def _slices(tensor: torch.Tensor, dim: int) -> torch.Tensor:
    """The tensor as rows along ``dim``: one flattened slice per position."""
    t = tensor.detach().float()
    return t.movedim(dim, 0).reshape(t.shape[dim], -1) if t.ndim > 1 else t.reshape(-1, 1)


@dataclass(frozen=True)
class Magnitude(Criterion):
    """Lp norm of every weight slice a channel owns or reads (``p`` = 1 or 2), producers, consumers and norms."""

    p: int = 2

    @property
    def name(self) -> str:
        return f"l{self.p}"

    def describe(self) -> str:
        return f"l{self.p}(reduce={self.reduce}, normalize={self.normalize})"

    def member_scores(self, group, tensors):
        rows = []
        for member in group.members:
            if member.use.role not in Role.WEIGHTS:
                continue
            powered = slice_powers(tensors[member.use.tensor], member.use.dim, self.p)
            summed, covered = _per_channel(member, powered, group.size, "sum")
            rows.append((summed ** (1.0 / self.p), covered))
        return rows


def l1(group: ChannelGroup, tensors: Mapping[str, torch.Tensor]) -> np.ndarray:
    """Mean over the group's weights of each channel's L1 norm."""
    return Magnitude(p=1)(group, tensors)


def l2(group: ChannelGroup, tensors: Mapping[str, torch.Tensor]) -> np.ndarray:
    """Mean over the group's weights of each channel's L2 norm."""
    return Magnitude(p=2)(group, tensors)


@dataclass(frozen=True)
class BNScale(Criterion):
    """Network slimming: ``|gamma|`` of the group's norm layers.

    A group with no norm layer (a plain conv or linear) cannot be scored this way: it raises,
    unless ``fallback`` names a criterion for such groups.
    """

    fallback: Criterion | None = None

    @property
    def name(self) -> str:
        return "bn_scale"

    def member_scores(self, group, tensors):
        rows = []
        for member in group.members:
            if member.use.role != Role.NORM:
                continue
            gamma = tensors[member.use.tensor].detach().abs().double().cpu().numpy()
            rows.append(_per_channel(member, gamma, group.size, "max"))
        if not rows and self.fallback is not None:
            return self.fallback.member_scores(group, tensors)
        if not rows:
            raise PlanError(
                f"bn_scale: the group of {', '.join(group.sources[:3])} has no norm layer to read gamma from",
                hint="pass BNScale(fallback=Magnitude()) or ignore those layers",
            )
        return rows


@dataclass(frozen=True)
class FPGM(Criterion):
    """Filter pruning via geometric median (He et al., 2019): a producer filter's summed distance to the others.

    Filters near the geometric median of their layer are the most replaceable, so they score
    lowest and go first. Only producers (output filters) take part.
    """

    @property
    def name(self) -> str:
        return "fpgm"

    def member_scores(self, group, tensors):
        rows = []
        for member in group.members:
            if member.use.role != Role.PRODUCER:
                continue
            rows_of = _slices(tensors[member.use.tensor], member.use.dim)[torch.tensor(member.positions)].double()
            counts = np.bincount(member.channels, minlength=group.size)
            covered = counts > 0
            per = counts[covered]
            if not np.all(per == per[0]):
                raise PlanError(f"fpgm: channels of {member.use.tensor} span unequal numbers of positions")
            # One vector per channel: the concatenation of the slices of all its positions.
            order = np.argsort(member.channels, kind="stable")
            vectors = rows_of[torch.as_tensor(order)].reshape(int(covered.sum()), -1)
            distances = torch.cdist(vectors.unsqueeze(0), vectors.unsqueeze(0))[0].sum(dim=1).cpu().numpy()
            scores = np.zeros(group.size)
            scores[np.nonzero(covered)[0]] = distances
            rows.append((scores, covered))
        return rows


def _batches(calibration: Any) -> list[Any]:
    if isinstance(calibration, (torch.Tensor, dict)):
        return [calibration]
    batches = list(calibration)
    if not batches:
        raise InputError("the calibration data is empty")
    return batches


def _pieces(coupling: Coupling, inputs: Any, target: Any = None) -> list[tuple[tuple[Any, ...], Any]]:
    """A calibration batch as the captured graph can run it: ``[(args, target), ...]``.

    A traced graph takes any batch. An exported one is specialised to the example's shapes (its views and its
    guards name them), so a batch of ``k`` times the example's batch size, with the example's other sizes, runs
    as ``k`` pieces, its target split alike (a batch of 2 sequences through a Llama exported on 1); other
    shapes are refused with the shapes the graph takes.
    """
    args = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    if not coupling.captured.method.startswith("export"):
        return [(args, target)]
    examples = coupling.example_args
    counts = set()
    for a, ex in zip(args, examples):
        if not (isinstance(a, torch.Tensor) and isinstance(ex, torch.Tensor)):
            continue
        if a.dim() == ex.dim() and a.dim() and a.shape[1:] == ex.shape[1:] and a.shape[0] % max(ex.shape[0], 1) == 0:
            counts.add(a.shape[0] // max(ex.shape[0], 1))
        else:
            counts.add(None)
    if len(args) != len(examples) or None in counts or len(counts) > 1 or counts == {0}:
        shapes = [tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__ for a in args]
        wanted = [tuple(e.shape) if isinstance(e, torch.Tensor) else type(e).__name__ for e in examples]
        raise InputError(
            f"a calibration batch of shapes {shapes} does not fit the graph torch.export captured, which takes the "
            f"example's shapes {wanted} (or a multiple of its batch size)",
            hint="give calibration batches of the example's shapes, or an example_inputs of the calibration's shapes")
    k = counts.pop() if counts else 1
    if k == 1:
        return [(args, target)]
    size = next(e.shape[0] for e in examples if isinstance(e, torch.Tensor))
    split = [a.split(size) if isinstance(a, torch.Tensor) else [a] * k for a in args]
    if target is not None and not (isinstance(target, torch.Tensor) and target.shape[:1] == args[0].shape[:1]):
        raise InputError(f"a calibration target of {getattr(target, 'shape', type(target).__name__)} cannot be split "
                         f"with a batch of {tuple(args[0].shape)} into the {k} pieces the exported graph takes",
                         hint="give calibration batches of the example's batch size")
    targets = target.split(size) if target is not None else [None] * k
    return [(tuple(piece), t) for piece, t in zip(zip(*split), targets)]


@dataclass(frozen=True)
class _BoundMembers:
    """A data-driven criterion after calibration: per-tensor statistics read by ``member_scores``."""

    criterion: Criterion
    stats: Mapping[str, Any]

    def __call__(self, group: ChannelGroup, tensors: Mapping[str, torch.Tensor]) -> np.ndarray:
        rows = self.criterion.member_scores_from(group, tensors, self.stats)  # type: ignore[attr-defined]
        if not rows:
            raise PlanError(f"{self.criterion.describe()} found nothing to score in the group of {', '.join(group.sources[:3])}")
        return _reduce(rows, self.criterion.reduce, self.criterion.normalize)


@dataclass(frozen=True)
class Taylor(Criterion):
    """First-order Taylor importance (Molchanov et al., 2019): ``|sum w * dL/dw|`` over each channel's slices.

    ``calibration`` is an iterable of ``(inputs, target)`` pairs; ``loss_fn(outputs, target)``
    returns a scalar. Gradients are summed over the batches with ``torch.autograd.grad`` in eval
    mode, so neither the model's ``.grad`` nor its BatchNorm statistics change.

    >>> import torch, graphprune
    >>> from graphprune.importance import Taylor
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    >>> x, y = torch.randn(2, 3, 8, 8), torch.randn(2, 2, 6, 6)
    >>> crit = Taylor([(x, y)], torch.nn.functional.mse_loss)
    >>> graphprune.plan(model, 0.5, example_inputs=x, importance=crit).importance
    'taylor(reduce=mean, normalize=None)'
    """

    calibration: Any = field(default=None, compare=False)
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.calibration is None or self.loss_fn is None:
            raise InputError("Taylor needs calibration data and a loss", hint="Taylor([(inputs, target), ...], loss_fn)")

    @property
    def name(self) -> str:
        return "taylor"

    def member_scores(self, group, tensors):
        raise PlanError("Taylor must be bound to a model first", hint="graphprune.plan/shrink do this; or call Taylor.bind(coupling)")

    def bind(self, coupling: Coupling) -> Importance:
        gm = coupling.gm
        names = sorted({use.tensor for use in coupling.uses})
        params = [coupling.tensors[n] for n in names]
        trainable = [(n, p) for n, p in zip(names, params) if isinstance(p, torch.nn.Parameter) and p.is_floating_point()]
        grads = {n: torch.zeros_like(p) for n, p in trainable}
        with eval_mode(gm):
            for batch in _batches(self.calibration):
                if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
                    raise InputError("Taylor calibration batches must be (inputs, target) pairs")
                pieces = _pieces(coupling, *batch)
                for inputs, target in pieces:  # a mean loss over the batch: the mean of its pieces' gradients
                    with torch.enable_grad():
                        loss = self.loss_fn(call_model(gm, inputs), target)
                        got = torch.autograd.grad(loss, [p for _, p in trainable], allow_unused=True)
                    for (n, _), g in zip(trainable, got):
                        if g is not None:
                            grads[n] += g.detach() / len(pieces)
        stats = {n: (p.detach() * grads[n]) for n, p in trainable}
        return _BoundMembers(self, stats)

    def member_scores_from(self, group, tensors, stats):
        rows = []
        for member in group.members:
            if member.use.role not in Role.WEIGHTS or member.use.tensor not in stats:
                continue
            per_position = _slices(stats[member.use.tensor], member.use.dim).sum(dim=1).double().cpu().numpy()
            summed, covered = _per_channel(member, per_position, group.size, "sum")
            rows.append((np.abs(summed), covered))
        return rows


@dataclass(frozen=True)
class Activation(Criterion):
    """Mean absolute activation of each channel over calibration batches.

    The activation read is the input of each consumer of the group (what the next layer really
    sees, after norm and nonlinearity); a group with no consumer reads its producers' outputs.
    ``calibration`` is an iterable of inputs (a tensor, a tuple of args, or a dict of kwargs per batch).
    """

    calibration: Any = field(default=None, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.calibration is None:
            raise InputError("Activation needs calibration inputs", hint="Activation([batch1, batch2, ...])")

    @property
    def name(self) -> str:
        return "activation"

    def member_scores(self, group, tensors):
        raise PlanError("Activation must be bound to a model first", hint="graphprune.plan/shrink do this")

    def bind(self, coupling: Coupling) -> Importance:
        gm = coupling.gm
        nodes = coupling.nodes
        watched: dict[str, tuple[int, np.ndarray]] = {}  # node name -> (dim, global channel per index)
        nodes_of_group: dict[int, list[str]] = {}
        for group in coupling.groups:
            for node in _activation_nodes(group, nodes):
                names = nodes_of_group.setdefault(group.id, [])
                if node.name not in names:
                    names.append(node.name)
                cmap = node.meta.get(META_KEY)
                for block in getattr(cmap, "blocks", ()):
                    if len(block.dims) == 1:
                        watched[node.name] = (block.dims[0], coupling.channel_of_atom[block.atoms])
        sums: dict[str, np.ndarray] = {}
        counts: dict[str, int] = {}

        class _Recorder(torch.fx.Interpreter):
            def run_node(self, n: torch.fx.Node) -> Any:
                out = super().run_node(n)
                if n.name in watched and isinstance(out, torch.Tensor):
                    dim = watched[n.name][0]
                    others = [d for d in range(out.ndim) if d != dim]
                    mean = out.detach().abs().float().mean(dim=others).double().cpu().numpy()
                    sums[n.name] = sums.get(n.name, 0) + mean
                    counts[n.name] = counts.get(n.name, 0) + 1
                return out

        with eval_mode(gm), torch.no_grad():
            for batch in _batches(self.calibration):
                if isinstance(batch, dict):
                    raise InputError("Activation calibration batches must be tensors or tuples of positional args")
                for args, _ in _pieces(coupling, batch):  # equal pieces: the mean of their means is the batch's
                    _Recorder(gm).run(*args)
        means = {name: (watched[name][1], sums[name] / counts[name]) for name in sums}
        return _BoundMembers(self, {"means": means, "nodes_of_group": nodes_of_group})

    def member_scores_from(self, group, tensors, stats):
        local = {int(c): i for i, c in enumerate(group.channel_ids)}
        rows = []
        for name in stats["nodes_of_group"].get(group.id, ()):
            if name not in stats["means"]:
                continue
            channels, means = stats["means"][name]
            idx = np.array([local.get(int(c), -1) for c in channels])
            mine = idx >= 0
            if not mine.any():
                continue
            scores = np.zeros(group.size)
            count = np.zeros(group.size)
            np.add.at(scores, idx[mine], means[mine])
            np.add.at(count, idx[mine], 1)
            rows.append((scores / np.maximum(count, 1), count > 0))
        return rows


def _activation_nodes(group: ChannelGroup, nodes: Mapping[str, torch.fx.Node]) -> Iterable[torch.fx.Node]:
    consumers = [nodes[m.use.node] for m in group.members if m.use.role == Role.CONSUMER and m.use.node in nodes]
    if consumers:
        for c in consumers:
            # An exported graph records a weight's use on its get_attr node: the layer is the op that reads it.
            for layer in (c.users if c.op == "get_attr" else (c,)):
                if layer.args and isinstance(layer.args[0], torch.fx.Node) and layer.args[0] is not c:
                    yield layer.args[0]
    else:
        for s in group.sources:
            if s in nodes:
                yield nodes[s]


@dataclass(frozen=True)
class Random(Criterion):
    """Seeded uniform random scores: the baseline every real criterion must beat."""

    seed: int = 0

    @property
    def name(self) -> str:
        return "random"

    def describe(self) -> str:
        return f"random(seed={self.seed})"

    def member_scores(self, group, tensors):
        # One pseudo-member covering every channel: seeded per group, so plans replay.
        return [(np.random.default_rng([self.seed, group.id]).random(group.size), np.ones(group.size, dtype=bool))]


def _builtin(name: str) -> Criterion:
    return {
        "l1": Magnitude(p=1), "l2": Magnitude(p=2), "bn_scale": BNScale(), "fpgm": FPGM(), "random": Random(),
    }[name]


IMPORTANCE_NAMES = ("l1", "l2", "bn_scale", "fpgm", "random")


def resolve_importance(importance: str | Importance) -> tuple[str, Importance]:
    """A scorer from its name, a :class:`Criterion` or a callable; returns (name recorded in the plan, scorer)."""
    if isinstance(importance, Criterion):
        return importance.describe(), importance
    if isinstance(importance, str) and importance in IMPORTANCE_NAMES:
        # The plain names keep their historical record ("l2"), so old plans compare equal.
        return importance, _builtin(importance)
    if callable(importance):
        return getattr(importance, "__name__", type(importance).__name__), importance
    hint = f"use one of {list(IMPORTANCE_NAMES)}, a graphprune.importance criterion (Taylor, Activation, ...) or a callable(group, tensors)"
    if importance in ("taylor", "activation"):
        hint = f"{importance} needs data: pass importance=graphprune.importance.{importance.title()}(calibration, ...)"
    raise InputError(f"unknown importance {importance!r}", hint=hint)


def bind_importance(importance: Importance, coupling: Coupling) -> Importance:
    """Bind a data-driven criterion to a traced model; plain scorers pass through."""
    bind = getattr(importance, "bind", None)
    return bind(coupling) if callable(bind) else importance
