"""A model built from a config object (``type(model)(model.config)``): the rewrite gives the shrunk model a config
that builds its widths, or says why none can, and never touches the original's."""

import dataclasses
import warnings

import pytest
import torch
from torch import nn

import graphprune


@dataclasses.dataclass
class Config:
    hidden: int = 32
    heads: int = 4
    outputs: int = 3

    def to_dict(self):
        return dataclasses.asdict(self)


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.head_dim = config.hidden // config.heads  # derived, as transformers configs derive a head size
        self.up = nn.Linear(4, config.hidden)
        self.down = nn.Linear(config.hidden, 4)

    def forward(self, x):
        return x + self.down(torch.relu(self.up(x)))


class Net(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.blocks = nn.ModuleList([Block(config), Block(config)])
        self.head = nn.Linear(4, config.outputs)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def _shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_the_config_is_refit_to_build_the_shrunk_widths():
    torch.manual_seed(0)
    model, x = Net(Config()).eval(), torch.randn(5, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", graphprune.RewriteWarning)
        small = graphprune.shrink(model, 0.5, example_inputs=x)
    assert small.config.hidden == 16 and model.config == Config()
    assert small.config is not model.config
    rebuilt = Net(small.config)
    assert _shapes(rebuilt) == _shapes(small)
    rebuilt.load_state_dict(small.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), small(x))


def test_layers_that_keep_different_widths_leave_the_config_as_it_was_and_say_why():
    torch.manual_seed(0)
    model, x = Net(Config()).eval(), torch.randn(5, 4)
    scope = graphprune.Scope(ignore=("blocks.1.up",))  # one block keeps its width, the other loses half
    with pytest.warns(graphprune.RewriteWarning, match="config cannot describe the shrunk widths") as record:
        small = graphprune.shrink(model, 0.5, example_inputs=x, scope=scope)
    assert "graphprune.save" in str(record[0].message)
    assert small.blocks[0].up.out_features == 16 and small.blocks[1].up.out_features == 32
    assert small.config == Config() and model.config == Config()


def test_a_model_not_built_from_its_config_is_left_alone():
    class Holder(nn.Module):  # has a config-like attribute, but Holder(config) is not how it is built
        def __init__(self):
            super().__init__()
            self.config = Config()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x):
            return self.b(self.a(x))

    with warnings.catch_warnings():
        warnings.simplefilter("error", graphprune.RewriteWarning)
        small = graphprune.shrink(Holder().eval(), 0.5, example_inputs=torch.randn(3, 4))
    assert small.a.out_features == 4 and small.config == Config()
