"""The rewrite's copy of a model: a deep copy, with nothing shared with the original but what the memo says."""

import copy

import torch
from torch import nn

from graphprune.rewrite.clone import clone_model


class Odd(nn.Module):
    """Attributes of every kind a module carries: a plain tensor (not a buffer), lists, a dict, a shared
    submodule, a hook, and a class that copies itself its own way inside."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 3)
        self.b = self.a
        self.table = torch.arange(6)  # a tensor attribute that is not registered
        self.sizes = [1, 2, [3]]
        self.flat = [4, 5]
        self.a.flat = self.flat  # a list of plain values, shared: still one list in the copy
        self.names = {"x": [1]}
        self.a.register_forward_hook(lambda *args: None)

    def forward(self, x):
        return self.b(self.a(x))


def test_clone_is_a_deep_copy_that_keeps_sharing():
    model = Odd()
    twin = clone_model(model)
    assert twin.a is twin.b and twin.a is not model.a
    assert torch.equal(twin.table, model.table) and twin.table.data_ptr() != model.table.data_ptr()
    assert twin.flat == [4, 5] and twin.flat is twin.a.flat and twin.flat is not model.flat
    twin.sizes[2].append(4)
    twin.names["x"].append(2)
    assert model.sizes == [1, 2, [3]] and model.names == {"x": [1]}
    assert len(twin.a._forward_hooks) == 1
    twin.a.register_forward_hook(lambda *args: None)  # the copy's hook tables are its own
    assert len(model.a._forward_hooks) == 1
    x = torch.randn(2, 3)
    assert torch.equal(twin(x), model(x))


def test_memo_entries_stand_for_the_originals():
    model = Odd()
    smaller = nn.Parameter(torch.zeros(2, 3))
    twin = clone_model(model, {id(model.a.weight): smaller})
    assert twin.a.weight is smaller and twin.b.weight is smaller


def test_a_module_that_copies_itself_its_own_way_is_deep_copied():
    class Custom(nn.Linear):
        def __deepcopy__(self, memo):
            out = Custom(self.in_features, self.out_features)
            out.marked = True
            return out

    model = nn.Sequential(Custom(2, 2))
    twin = clone_model(model)
    assert getattr(twin[0], "marked", False) and type(copy.deepcopy(model)[0]) is Custom
