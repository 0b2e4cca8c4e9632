"""A model built from a config object (``type(model)(model.config)``, as Hugging Face models are): the config that
describes its new widths.

Such a model is saved as its config plus its tensors, and loaded by building ``type(model)(config)`` and filling it
(``save_pretrained`` / ``from_pretrained``). After a rewrite the config still holds the dense widths, so a reload
would build the dense model and fail, or silently not load. :func:`refit_config` searches for the config that
builds a model whose tensors have exactly the shrunk model's shapes, changing the config's ``int`` fields only:

1. derived widths are made explicit first: an ``int`` attribute that every module holding it agrees on
   (``head_dim``), which the config lacks and which, added to it, builds the same dense model. A config that
   derives ``head_dim = hidden_size // num_attention_heads`` can then lose heads and keep its head size;
2. a search then changes one field at a time, to a value scaled by one of the rewrite's width changes
   (``num_attention_heads`` 4 → 2 when widths went 32 → 16), wherever that leaves fewer tensors with other
   shapes, fewest first, depth first, until none is left; models are built on the meta device, so nothing is
   allocated;
3. explicit fields the result does not need are dropped again, and the modules' ``int`` attributes that the
   new config would build differently (``num_key_value_groups``, ``head_dim``) are set to its values;
4. the configs found, and each with one more field that no shape depends on changed, are ordered by how many of
   the ``int`` attributes the shrunk forward reads (each found by setting it one past its value and running the
   model) their model would hold other values of: with random weights attention is almost uniform, and the
   outputs cannot tell 4 heads of 4 from 2 heads of 8, but ``attention_head_size`` can;
5. postcondition: the model, now reading the new config, computes what it computed before, and so does the model
   the config builds once given the shrunk tensors (a reload, in memory). If not, the next config is tried. If
   no config builds the shrunk shapes (layers kept different counts, or the config derives a head size from the
   hidden size), or none computes the same, the config is left as it was and the caller is told why.

The user's model is never touched: the shrunk model's config is its own copy.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..base.running import call_model, eval_mode
from .difference import relative_difference

__all__ = ["has_config", "refit_config"]

AGREE = 1e-5  # float32 round-off between two evaluations of one function
MAX_BUILDS = 400  # meta-device models built by one search: a few per int field and width change, a few levels deep
MAX_CANDIDATES = 12  # configs that build the shrunk shapes, tried on the postcondition in turn


def has_config(model: nn.Module) -> bool:
    """Whether ``model`` holds a config object it is built from: a ``config`` with ``to_dict`` (a transformers
    ``PretrainedConfig`` and its look-alikes)."""
    return callable(getattr(getattr(model, "config", None), "to_dict", None))


def refit_config(dense: nn.Module, shrunk: nn.Module, sample: Any) -> str | None:
    """Update ``shrunk.config`` (in place; ``dense`` is not touched) so that ``type(shrunk)(config)`` builds the
    shrunk widths, and the modules' width attributes to match. Returns None on success, when nothing changed or
    when the class is not built by ``type(model)(config)``; else why the config cannot describe the model, and
    then leaves it as it was. ``sample`` is an input the postcondition runs the model on."""
    want = _shapes(shrunk)
    config = shrunk.config
    built = _built(type(shrunk), config)
    if isinstance(built, str) or _mismatch(built, want) == 0:  # not built from its config, or still described
        return None
    trial = _explicit(type(shrunk), dense, copy.deepcopy(config))
    scales = _scales(_shapes(dense), want)
    with torch.no_grad(), eval_mode(shrunk):
        before = call_model(shrunk, sample)
    failure = None
    cls = type(shrunk)
    candidates = [_drop_unneeded(cls, found, config, want) for found in _search(cls, trial, want, scales)]
    # A field no tensor's shape depends on (GPT-2's n_head, once n_embd and the heads both halved) is told by the
    # model's own counts: each found config is also tried with one such field changed, and configs whose model
    # would hold other values than the shrunk one in the attributes its forward reads go last. The outputs alone
    # cannot always tell (random weights attend almost uniformly: 4 heads of 4 and 2 heads of 8 agree to 1e-6).
    candidates += [v for c in candidates[:2] for v in _neutral_variants(cls, c, want, scales)]
    read = _read_attributes(shrunk, before, sample)
    candidates.sort(key=lambda c: (_departures(cls, c, shrunk, read), _departures(cls, c, shrunk)))
    for found in candidates[:MAX_CANDIDATES]:
        failure = _adopt(shrunk, found, before, sample)
        if failure is None:
            return None
    if failure is None:
        return ("no config with the same fields builds the shrunk widths: the layers keep different counts, or the "
                "config derives a width from others that did not change in proportion")
    return f"a config that builds the shrunk widths was found, but the model no longer computes the same ({failure})"


def _adopt(shrunk: nn.Module, found: Any, before: Any, sample: Any) -> str | None:
    """Give ``shrunk`` the config ``found`` and the module attributes it builds; None if it still computes
    ``before`` on ``sample``, else undo and say what went wrong."""
    config = shrunk.config
    saved = copy.deepcopy(config.__dict__)
    attributes = _module_attributes(type(shrunk), found, shrunk)
    old_attributes = {key: getattr(shrunk.get_submodule(key[0]), key[1]) for key in attributes}
    config.__dict__.update(copy.deepcopy(found.__dict__))  # in place: every module holds this same object
    for (path, name), value in attributes.items():
        setattr(shrunk.get_submodule(path), name, value)
    try:
        with torch.no_grad(), eval_mode(shrunk):
            difference = relative_difference(before, call_model(shrunk, sample))
        if difference <= AGREE:  # and what a reload builds: the config's model, given the shrunk tensors
            difference = relative_difference(before, _reloaded(shrunk, found, sample))
    except Exception as exc:  # noqa: BLE001 - a forward or a load that fails under the new config refutes it
        difference, failure = float("inf"), f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    else:
        failure = f"outputs change by {difference:.1e}"
    if difference <= AGREE:
        return None
    config.__dict__.clear()
    config.__dict__.update(saved)
    for (path, name), value in old_attributes.items():
        setattr(shrunk.get_submodule(path), name, value)
    return failure


def _reloaded(shrunk: nn.Module, config: Any, sample: Any) -> Any:
    """The outputs on ``sample`` of ``type(shrunk)(config)`` given ``shrunk``'s tensors: what ``save_pretrained``
    then ``from_pretrained`` would give (buffers the state dict does not hold, rotary tables, built anew)."""
    reference = next(iter(shrunk.state_dict().values()), None)
    with _quiet(), torch.device(reference.device if reference is not None else "cpu"):
        rebuilt = type(shrunk)(copy.deepcopy(config))
    if reference is not None:
        rebuilt.to(reference.dtype)
    rebuilt.load_state_dict(shrunk.state_dict())
    with torch.no_grad():
        return call_model(rebuilt.eval(), sample)


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@contextlib.contextmanager
def _quiet():
    # transformers logs notes while building a model (attention backends, generation configs).
    loggers = [logging.getLogger(name) for name in ("transformers", "transformers.modeling_utils")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _built(cls: type, config: Any) -> dict[str, tuple[int, ...]] | str:
    """The tensor shapes of ``cls(config)``, built on the meta device; a string says why it cannot be built."""
    try:
        with _quiet(), torch.device("meta"):
            return _shapes(cls(copy.deepcopy(config)))
    except Exception as exc:  # noqa: BLE001 - a config the class rejects is one that does not describe the model
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _mismatch(built: dict[str, tuple[int, ...]] | str, want: dict[str, tuple[int, ...]]) -> int:
    if isinstance(built, str):
        return len(want) + 1
    return sum(built.get(k) != v for k, v in want.items()) + len(set(built) - set(want))


def _int_fields(config: Any) -> dict[str, int]:
    return {k: v for k, v in vars(config).items() if type(v) is int and not k.startswith("_") and v > 1}


def _scales(dense: dict[str, tuple[int, ...]], shrunk: dict[str, tuple[int, ...]]) -> set[tuple[int, int]]:
    """Every ``(old, new)`` width change of the rewrite, as a reduced fraction."""
    pairs = set()
    for name, shape in shrunk.items():
        for old, new in zip(dense.get(name, ()), shape):
            if old != new and new:
                g = _gcd(old, new)
                pairs.add((old // g, new // g))
    return pairs


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


def _explicit(cls: type, dense: nn.Module, config: Any) -> Any:
    """``config`` with the derived widths made explicit: each ``int`` module attribute the config lacks, equal in
    every module of ``dense`` that holds it, that builds the same dense shapes when added."""
    values: dict[str, set[int]] = {}
    for module in dense.modules():
        if type(module).__module__.startswith("torch."):  # Linear.in_features and the like: not the config's
            continue
        for name, value in vars(module).items():
            if type(value) is int and not name.startswith("_") and value > 1 and not hasattr(config, name):
                values.setdefault(name, set()).add(value)
    want = _shapes(dense)
    for name, seen in sorted(values.items()):
        if len(seen) != 1:
            continue
        trial = copy.deepcopy(config)
        setattr(trial, name, next(iter(seen)))
        if _mismatch(_built(cls, trial), want) == 0:
            config = trial
    return config


def _search(cls: type, config: Any, want: dict[str, tuple[int, ...]], scales: set[tuple[int, int]]) -> list[Any]:
    """Configs that build ``want``: change an ``int`` field by one of ``scales`` where that leaves fewer tensors
    with other shapes, fewest first, and go on from there until none is left. Every improving change is followed
    in turn (depth first, each set of changes once), because shapes alone cannot always tell the right one:
    ``head_dim`` 8 → 4 fixes more tensors at once than ``num_attention_heads`` 4 → 2, and only the second, with
    ``num_key_value_heads`` 2 → 1 after it, is the model. At most ``MAX_CANDIDATES`` configs, ``MAX_BUILDS``
    models built."""
    found: list[Any] = []
    seen: set[frozenset] = set()
    builds = [MAX_BUILDS]

    def visit(config: Any, mismatch: int, changed: dict[str, int]) -> None:
        if mismatch == 0:
            found.append(config)
            return
        moves = []
        for name, value in _int_fields(config).items():
            if name in changed:
                continue
            for old, new in sorted(scales):
                key = frozenset({**changed, name: value * new // old}.items())
                if value * new % old or key in seen or builds[0] <= 0:
                    continue
                seen.add(key)
                builds[0] -= 1
                trial = copy.deepcopy(config)
                setattr(trial, name, value * new // old)
                moves.append((_mismatch(_built(cls, trial), want), name, trial))
        for fewer, name, trial in sorted((m for m in moves if m[0] < mismatch), key=lambda m: m[0]):
            if len(found) >= MAX_CANDIDATES:
                return
            visit(trial, fewer, {**changed, name: getattr(trial, name)})

    visit(config, _mismatch(_built(cls, config), want), {})
    return found


def _neutral_variants(cls: type, config: Any, want: dict[str, tuple[int, ...]],
                      scales: set[tuple[int, int]]) -> Iterator[Any]:
    """``config`` with one more ``int`` field scaled by one of ``scales``, where it still builds ``want``."""
    for name, value in _int_fields(config).items():
        for old, new in sorted(scales):
            if value * new % old == 0:
                trial = copy.deepcopy(config)
                setattr(trial, name, value * new // old)
                if _mismatch(_built(cls, trial), want) == 0:
                    yield trial


def _departures(cls: type, config: Any, shrunk: nn.Module, among: set[tuple[type, str]] | None = None) -> int:
    """How many module ``int`` attributes (of the ``(class, name)`` pairs ``among``, or all) the model ``config``
    builds would hold other values than ``shrunk``'s, whose forward is the proven one: the fewer, the likelier
    the config is that model."""
    mine = dict(shrunk.named_modules())
    return sum(among is None or (type(mine[path]), name) in among
               for path, name in _module_attributes(cls, config, shrunk))


def _read_attributes(shrunk: nn.Module, before: Any, sample: Any) -> set[tuple[type, str]]:
    """The ``(module class, int attribute)`` pairs ``shrunk``'s forward reads: set one past its value in every
    module of the class, the forward fails or computes something else."""
    pairs: dict[tuple[type, str], list[nn.Module]] = {}
    for module in shrunk.modules():
        if type(module).__module__.startswith("torch."):
            continue
        for name, value in vars(module).items():
            if type(value) is int and not name.startswith("_"):
                pairs.setdefault((type(module), name), []).append(module)
    read = set()
    for (cls, name), modules in pairs.items():
        old = [getattr(m, name) for m in modules]
        for m, v in zip(modules, old):
            setattr(m, name, v + 1)
        try:
            with torch.no_grad(), eval_mode(shrunk):
                changed = relative_difference(before, call_model(shrunk, sample)) > AGREE
        except Exception:  # noqa: BLE001 - a forward that fails with another value reads it
            changed = True
        finally:
            for m, v in zip(modules, old):
                setattr(m, name, v)
        if changed:
            read.add((cls, name))
    return read


def _drop_unneeded(cls: type, found: Any, original: Any, want: dict[str, tuple[int, ...]]) -> Any:
    """``found`` without the fields :func:`_explicit` added that building the shrunk shapes does not need."""
    for name in sorted(set(vars(found)) - set(vars(original))):
        trial = copy.deepcopy(found)
        delattr(trial, name)
        if _mismatch(_built(cls, trial), want) == 0:
            found = trial
    return found


def _module_attributes(cls: type, config: Any, shrunk: nn.Module) -> dict[tuple[str, str], int]:
    """``(module path, attribute) -> value`` where the model ``config`` builds holds another ``int`` there than
    ``shrunk`` does (a head count, a group count, a head size the config now gives)."""
    with _quiet(), torch.device("meta"):
        rebuilt = cls(copy.deepcopy(config))
    mine = dict(shrunk.named_modules())
    updates = {}
    for path, module in rebuilt.named_modules():
        other = mine.get(path)
        if other is None or type(other) is not type(module):
            continue
        for name, value in vars(module).items():
            if type(value) is int and not name.startswith("_") and type(getattr(other, name, None)) is int \
                    and getattr(other, name) != value:
                updates[(path, name)] = value
    return updates
