"""Save and load shrunk models without pickle: JSON plans, safetensors weights, a JSON manifest.

A saved model is a directory::

    manifest.json        graphprune version, base model spec, plan files, input specs, weights checksum
    plan.json            the plan (Plan.to_json); plan.1.json, ... when a shrunk model was shrunk again
    model.safetensors    the shrunk model's weights

:func:`load` rebuilds the architecture by replaying the plans on a fresh base model
(:func:`graphprune.apply`, which also rewrites graph constants when the result is a
``torch.fx.GraphModule``), then loads the weights with ``safetensors``. Nothing in the
directory is ever unpickled or executed; the base model comes from installed code, named
by a spec (``torchvision:resnet50``, ``package.module:factory``) or passed as ``base_model``.

>>> import tempfile, torch, torchvision, graphprune
>>> x = torch.randn(1, 3, 64, 64)
>>> small = graphprune.shrink(torchvision.models.resnet18(), 0.5, example_inputs=x).eval()
>>> path = tempfile.mkdtemp()
>>> save(small, path, base="torchvision:resnet18")
>>> sorted(p.name for p in Path(path).iterdir())
['manifest.json', 'model.safetensors', 'plan.json']
>>> again = load(path).eval()
>>> torch.equal(again(x), small(x))
True
"""

from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..base.checks import check_model
from ..base.errors import InputError, PlanError
from ..base.running import device_of
from ..planning import Plan, model_signature
from ..rewrite import apply_plan, plans_of
from .factory import build_model

__all__ = ["save", "load", "read_manifest", "MANIFEST", "WEIGHTS"]

MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
FORMAT = "graphprune-model"
FORMAT_VERSION = 1


def _plan_file(i: int) -> str:
    return "plan.json" if i == 0 else f"plan.{i}.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _as_plans(plan: Plan | list[Plan] | None, model: nn.Module) -> list[Plan]:
    if plan is None:
        plans = plans_of(model)
        if not plans:
            raise InputError("this model carries no graphprune plan",
                             hint="save the model graphprune.shrink/apply returned, or pass plan=")
        return plans
    plans = [plan] if isinstance(plan, Plan) else list(plan)
    if not plans or not all(isinstance(p, Plan) for p in plans):
        raise InputError(f"plan must be a Plan or a list of Plans, got {plan!r}")
    return plans


def _rebuildable(model: nn.Module, plans: list[Plan]) -> str | None:
    """The spec of ``model``'s own class when calling it without arguments rebuilds the plans' base model."""
    cls = type(model)
    if isinstance(model, torch.fx.GraphModule) or cls.__module__ in ("__main__", "builtins") or "<" in cls.__qualname__:
        return None
    try:
        required = [p for p in inspect.signature(cls).parameters.values()
                    if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    except (TypeError, ValueError):
        return None
    if required:
        return None
    spec = f"{cls.__module__}:{cls.__qualname__}"
    try:
        fresh = build_model(spec)
    except Exception:  # noqa: BLE001 - any failure means "not rebuildable this way", reported by the caller
        return None
    return spec if model_signature(fresh) == plans[0].model_signature else None


def save(model: nn.Module, path: str | Path, *, plan: Plan | list[Plan] | None = None,
         base: str | None = None, base_kwargs: dict[str, Any] | None = None) -> None:
    """Write ``model`` (a shrunk model) to the directory ``path``.

    ``plan`` defaults to the plans the model records (:func:`graphprune.plans_of`). ``base`` names the
    factory of the original model (``"torchvision:resnet50"``, ``"package.module:factory"``) and
    ``base_kwargs`` its JSON-serialisable keyword arguments. Without ``base``, the model's own class is
    recorded when calling it without arguments rebuilds the original; otherwise saving fails here, rather
    than loading failing later. The model's training mode is recorded and restored by :func:`load`.
    """
    check_model(model)
    plans = _as_plans(plan, model)
    try:
        kwargs_json = json.loads(json.dumps(base_kwargs or {}))
    except TypeError as exc:
        raise InputError(f"base_kwargs must be JSON-serialisable: {exc}") from exc
    if base is None:
        base = _rebuildable(model, plans) if not kwargs_json else None
        if base is None:
            raise InputError(f"cannot tell how to rebuild the unpruned {plans[0].model} that {path} would need",
                             hint="pass base='torchvision:NAME' or base='package.module:factory' (and base_kwargs=)")
    from safetensors.torch import save_model

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(plans):
        (out / _plan_file(i)).write_text(p.to_json(indent=1))
    # save_model drops the aliases of tied tensors and makes tensors contiguous; load_model restores ties.
    save_model(model, str(out / WEIGHTS), metadata={"format": FORMAT})
    from ..base.version import __version__

    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "graphprune_version": __version__,
        "torch_version": torch.__version__.split("+")[0],
        "base": base,
        "base_kwargs": kwargs_json,
        "model_class": type(model).__qualname__,
        "graph_module": isinstance(model, torch.fx.GraphModule),
        "plans": [_plan_file(i) for i in range(len(plans))],
        "inputs": [None if s is None else {"shape": s.shape, "dtype": s.dtype} for s in plans[0].inputs],
        "weights": WEIGHTS,
        "weights_sha256": _sha256(out / WEIGHTS),
        "signature": model_signature(model),
        "params": sum(p.numel() for p in model.parameters()),
        "training": model.training,
        # Submodules whose mode differs from the model's (a frozen backbone in eval mode inside a training model).
        "modes": {name: m.training for name, m in model.named_modules() if name and m.training != model.training},
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of a saved model directory; InputError if ``path`` is not one."""
    file = Path(path) / MANIFEST
    if not file.is_file():
        raise InputError(f"{path} is not a saved graphprune model (no {MANIFEST})",
                         hint="graphprune.save(model, path) or `graphprune shrink MODEL -o path` writes one")
    manifest = json.loads(file.read_text())
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{file} has format {manifest.get('format')!r} version {manifest.get('format_version')!r}; "
                         f"this graphprune reads {FORMAT!r} version {FORMAT_VERSION}")
    for name in [*manifest.get("plans", []), manifest.get("weights", "")]:
        if not isinstance(name, str) or not name or Path(name).name != name:
            raise InputError(f"{file} names {name!r}: a saved model only refers to files in its own directory")
    return manifest


def load(path: str | Path, base_model: nn.Module | str | None = None) -> nn.Module:
    """Rebuild a model saved by :func:`save`: replay its plans on a fresh base model, then load the weights.

    ``base_model`` is an unpruned model of the original architecture (its weights are replaced)
    or a spec; it defaults to the manifest's ``base``. The model comes back in the training mode it was
    saved in.
    """
    from safetensors.torch import load_model

    root = Path(path)
    manifest = read_manifest(root)
    weights = root / manifest["weights"]
    if not weights.is_file() or _sha256(weights) != manifest["weights_sha256"]:
        raise InputError(f"{weights} is missing or does not match the checksum in {MANIFEST}: "
                         "the file was changed or corrupted")
    if base_model is None:
        if not manifest.get("base"):
            raise InputError(f"{path} does not say how to build its base model",
                             hint="pass base_model= (a fresh model of the original architecture, or a spec)")
        base_model = build_model(manifest["base"], **manifest.get("base_kwargs", {}))
    elif isinstance(base_model, str):
        base_model = build_model(base_model, **manifest.get("base_kwargs", {}))
    check_model(base_model, "base_model (or a spec)")

    model = base_model
    for name in manifest["plans"]:
        model = apply_plan(model, Plan.load(root / name), inplace=model is not base_model)
    if model_signature(model) != manifest["signature"]:
        raise PlanError(f"replaying the plans of {path} gave other tensor shapes than the saved model had",
                        hint="the base model must be the same architecture (and factory arguments) as when it was saved")
    load_model(model, str(weights), strict=True, device=str(device_of(model)))
    model.train(manifest.get("training", True))
    modules = dict(model.named_modules())
    for name, training in manifest.get("modes", {}).items():
        if name in modules:
            modules[name].training = training
    return model
