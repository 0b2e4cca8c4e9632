"""Helpers shared by the tests."""

import hashlib

import torch


def fingerprint(model: torch.nn.Module) -> str:
    """A hash of every parameter and buffer, to prove a model was not modified."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict(keep_vars=True).items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def spread_batchnorm(model: torch.nn.Module, bias: float = 0.3) -> torch.nn.Module:
    """BatchNorm statistics and affine parameters away from (0, 1, 1, 0), so a mis-sliced one shows."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-bias, bias)
    return model


def randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Re-draw 1-D parameters (norms, biases, positional tables) and all-zero ones (zero-initialised heads), so
    slicing mistakes show; returns the model in eval mode."""
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1 or not p.abs().max():
                p.normal_(0, 0.2)
    return model.eval()


class _StandIn:
    """A whole model's stand-in timing, recognised by the patched ``Hardware.seconds``."""

    def __init__(self, hw, model, args, seconds_of):
        self.hw, self.model, self.args, self.seconds_of = hw, model, args, seconds_of

    def __call__(self) -> float:
        return self.seconds_of(self.hw, self.model, self.args)


def time_models_by(monkeypatch, seconds_of) -> None:
    """Whole models are "timed" by ``seconds_of(hardware, model, args)`` instead of a clock: each timing of a
    prepared model calls it again, so a stand-in may drift. Layer tables are still measured for real."""
    from graphprune.measure import Hardware

    real_seconds = Hardware.seconds

    def seconds(hw, forward, min_run_time=None):
        return forward() if isinstance(forward, _StandIn) else real_seconds(hw, forward, min_run_time)

    monkeypatch.setattr(Hardware, "runner", lambda hw, m, args: _StandIn(hw, m, args, seconds_of))
    monkeypatch.setattr(Hardware, "seconds", seconds)


def shrinks_exactly(model: torch.nn.Module, x, budget=0.5, *, capture: str = "auto", tolerance: float = 1e-5):
    """Shrink ``model`` to ``budget`` on the ``capture`` path; check it lost parameters, matches the masked original
    and kept the original. Returns (plan, shrunk)."""
    import graphprune

    torch.manual_seed(0)
    model = spread_batchnorm(model).eval()
    before = fingerprint(model)
    plan = graphprune.plan(model, budget, example_inputs=x, scope=graphprune.Scope(capture=capture))
    shrunk = graphprune.apply(model, plan)
    assert graphprune.count_params(shrunk) < graphprune.count_params(model)
    assert graphprune.verify(model, plan, shrunk, x) <= tolerance
    assert fingerprint(model) == before
    return plan, shrunk
