"""graphprune.save / graphprune.load: JSON + safetensors, no pickle, identical outputs after a round trip."""

import contextlib
import json
import pickle

import pytest
import torch
import torchvision

import graphprune

from ..helpers import fingerprint
from ..models import OldVGG


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
    assert [p.budget.request.ratio for p in graphprune.plans_of(twice)] == [0.5, 0.5]
    assert [p.budget.kind for p in graphprune.plans_of(twice)] == ["ratio", "ratio"]
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
        graphprune.save(small, tmp_path / "out", base="tests.models:OldVGG")
    # A GraphModule cannot say which class it was traced from: saving it needs base=, at once, not at load time.
    with pytest.raises(graphprune.InputError, match="base="):
        graphprune.save(small, tmp_path / "out", plan=plan)
    assert not (tmp_path / "out").exists()
    graphprune.save(small, tmp_path / "out", plan=plan, base="tests.models:OldVGG")
    again = graphprune.load(tmp_path / "out", base_model=OldVGG()).eval()
    with torch.no_grad():
        assert torch.equal(again(x), small.eval()(x))
    # A manifest that names no base (written by hand, or by other code) needs base_model= at load time.
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    (tmp_path / "out" / "manifest.json").write_text(json.dumps({**manifest, "base": None}))
    with pytest.raises(graphprune.InputError, match="base_model="):
        graphprune.load(tmp_path / "out")
    again = graphprune.load(tmp_path / "out", base_model="tests.models:OldVGG").eval()
    with torch.no_grad():
        assert torch.equal(again(x), small(x))


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


class Rebuildable(torch.nn.Module):
    """A model whose class rebuilds it with no arguments (``tests.storage.test_serialize:Rebuildable``), and whose
    shrunk copy keeps the class (no graph constant counts its channels)."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, width, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(width)
        self.conv2 = torch.nn.Conv2d(width, width, 3, padding=1)
        self.bn2 = torch.nn.BatchNorm2d(width)
        self.head = torch.nn.Linear(width, 5)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.head(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))


def test_save_without_base_refuses_a_class_that_cannot_be_rebuilt_with_no_arguments(tmp_path, seed):
    x = torch.randn(1, 3, 32, 32)
    small = graphprune.shrink(torchvision.models.resnet18(), 0.5, example_inputs=x)
    assert type(small) is torchvision.models.ResNet  # ResNet(block, layers) needs arguments
    with pytest.raises(graphprune.InputError, match="cannot tell how to rebuild") as info:
        graphprune.save(small, tmp_path / "r18")
    assert "base=" in str(info.value)
    assert not (tmp_path / "r18").exists()  # refused before anything is written
    # A class that rebuilds with no arguments, but not this model (other widths), is refused too.
    wide = graphprune.shrink(Rebuildable(width=16), 0.5, example_inputs=x)
    with pytest.raises(graphprune.InputError, match="cannot tell how to rebuild"):
        graphprune.save(wide, tmp_path / "wide")
    assert not (tmp_path / "wide").exists()


def test_save_without_base_records_a_class_that_rebuilds_with_no_arguments(tmp_path, seed):
    x = torch.randn(2, 3, 16, 16)
    small = graphprune.shrink(_randomize_bn(Rebuildable()), 0.5, example_inputs=x).eval()
    assert type(small) is Rebuildable and small.conv1.out_channels == 4
    graphprune.save(small, tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["base"] == "tests.storage.test_serialize:Rebuildable" and manifest["base_kwargs"] == {}
    with no_unpickling():
        again = graphprune.load(tmp_path).eval()
    assert type(again) is Rebuildable
    assert fingerprint(again) == fingerprint(small)
    with torch.no_grad():
        assert torch.equal(again(x), small(x))


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_load_restores_the_training_mode_it_was_saved_in(tmp_path, seed, training):
    x = torch.randn(1, 3, 16, 16)
    small = graphprune.shrink(Rebuildable(), 0.5, example_inputs=x).train(training)
    graphprune.save(small, tmp_path)
    again = graphprune.load(tmp_path)
    assert again.training is training
    assert all(m.training is training for m in again.modules())


def test_load_keeps_a_submodule_in_its_own_mode(tmp_path, seed):
    x = torch.randn(1, 3, 16, 16)
    small = graphprune.shrink(Rebuildable(), 0.5, example_inputs=x).train()
    small.bn1.eval()  # e.g. frozen statistics in a model being fine-tuned
    graphprune.save(small, tmp_path / "train")
    again = graphprune.load(tmp_path / "train")
    assert again.training and not again.bn1.training
    assert {name: m.training for name, m in again.named_modules()} == {name: m.training for name, m in small.named_modules()}
    # The other way round: an eval model with one submodule in training mode.
    small.eval()
    small.bn2.train()
    graphprune.save(small, tmp_path / "eval")
    again = graphprune.load(tmp_path / "eval")
    assert not again.training and again.bn2.training and not again.bn1.training
    assert {name: m.training for name, m in again.named_modules()} == {name: m.training for name, m in small.named_modules()}
