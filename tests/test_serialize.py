"""graphprune.save / graphprune.load: JSON + safetensors, no pickle, identical outputs after a round trip."""

import contextlib
import json
import pickle

import pytest
import torch
import torchvision

import graphprune

from .helpers import fingerprint
from .models import OldVGG


def _randomize_bn(model):
    # Fresh BatchNorm statistics are 0/1; random ones make a swapped or missing buffer visible.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return model


@contextlib.contextmanager
def no_unpickling():
    """Make pickle.load/loads fail, and torch.load fail unless weights_only=True."""
    real_load = torch.load

    def strict_load(*args, **kwargs):
        if kwargs.get("weights_only") is not True:
            raise AssertionError("torch.load without weights_only=True")
        return real_load(*args, **kwargs)

    def forbidden(*args, **kwargs):
        raise AssertionError("pickle used")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "load", strict_load)
        patch.setattr(pickle, "load", forbidden)
        patch.setattr(pickle, "loads", forbidden)
        yield


def test_resnet_round_trip_is_exact_and_pickle_free(tmp_path, seed):
    x = torch.randn(2, 3, 64, 64)
    model = _randomize_bn(torchvision.models.resnet18()).eval()
    small = graphprune.shrink(model, 0.5, example_inputs=x).eval()
    graphprune.save(small, tmp_path, base="torchvision:resnet18")
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".json", ".safetensors"]
    before = fingerprint(small)
    with no_unpickling():
        again = graphprune.load(tmp_path).eval()
    assert type(again) is type(small)
    assert fingerprint(again) == before
    with torch.no_grad():
        assert torch.equal(again(x), small(x))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["base"] == "torchvision:resnet18"
    assert manifest["inputs"] == [{"shape": [2, 3, 64, 64], "dtype": "float32"}]
    assert manifest["params"] == graphprune.count_params(small) < graphprune.count_params(model) / 2


def test_graph_module_round_trip(tmp_path, seed):
    x = torch.randn(3, 3, 16, 16)
    model = _randomize_bn(OldVGG()).eval()
    small = graphprune.shrink(model, 0.5, example_inputs=x).eval()
    assert isinstance(small, torch.fx.GraphModule)
    graphprune.save(small, tmp_path, base="tests.models:OldVGG")
    with no_unpickling():
        again = graphprune.load(tmp_path).eval()
    assert isinstance(again, torch.fx.GraphModule)
    assert again.get_submodule('classifier.0').in_features == small.get_submodule('classifier.0').in_features == 16 * 4 * 4
    with torch.no_grad():
        assert torch.equal(again(x), small(x))


def test_shrinking_twice_replays_both_plans(tmp_path, seed):
    x = torch.randn(1, 3, 16, 16)
    base = OldVGG(num_classes=7)
    once = graphprune.shrink(base, 0.5, example_inputs=x)
    twice = graphprune.shrink(once, 0.5, example_inputs=x).eval()
    assert [p.ratio for p in graphprune.plans_of(twice)] == [0.5, 0.5]
    graphprune.save(twice, tmp_path, base="tests.models:OldVGG", base_kwargs={"num_classes": 7})
    assert (tmp_path / "plan.1.json").is_file()
    fresh = OldVGG(num_classes=7)
    untouched = fingerprint(fresh)
    again = graphprune.load(tmp_path, base_model=fresh).eval()
    assert fingerprint(fresh) == untouched  # the base model given to load is not modified
    assert again.get_submodule('features.0').out_channels == 4
    with torch.no_grad():
        assert torch.equal(again(x), twice(x))


def test_explicit_plan_for_a_model_without_provenance(tmp_path, seed):
    x = torch.randn(1, 3, 16, 16)
    model = OldVGG()
    plan = graphprune.plan(model, 0.25, example_inputs=x)
    small = graphprune.apply(model, plan)
    small.__dict__.pop("_graphprune_plans")  # e.g. a model rebuilt by other code
    with pytest.raises(graphprune.InputError, match="carries no graphprune plan"):
        graphprune.save(small, tmp_path)
    graphprune.save(small, tmp_path, plan=plan)
    with pytest.raises(graphprune.InputError, match="base_model="):
        graphprune.load(tmp_path)
    again = graphprune.load(tmp_path, base_model=OldVGG()).eval()
    with torch.no_grad():
        assert torch.equal(again(x), small.eval()(x))


def test_load_refuses_wrong_base_corrupt_weights_and_missing_dir(tmp_path, seed):
    x = torch.randn(1, 3, 16, 16)
    small = graphprune.shrink(OldVGG(), 0.5, example_inputs=x)
    graphprune.save(small, tmp_path, base="tests.models:OldVGG")
    with pytest.raises(graphprune.PlanError):
        graphprune.load(tmp_path, base_model=OldVGG(num_classes=3))
    with pytest.raises(graphprune.InputError, match="no manifest.json"):
        graphprune.load(tmp_path / "missing")
    weights = tmp_path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(graphprune.InputError, match="checksum"):
        graphprune.load(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "plans": ["../elsewhere.json"]}))
    with pytest.raises(graphprune.InputError, match="only refers to files in its own directory"):
        graphprune.load(tmp_path)
