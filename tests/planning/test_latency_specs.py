"""The latency cost model times the same layers whichever capture made the graph.

On an exported graph the layers are ``aten.conv2d`` / ``aten.linear`` calls on ``get_attr`` weights, not
``call_module`` nodes; a cost model that only knew the latter predicted the same time for every plan, and a
latency budget pruned nothing on every torch.export-only model (ultralytics YOLO among them)."""

import pytest
import torch
from torch import nn

import graphprune
from graphprune.planning.latency import latency_terms, layer_specs


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8, bias=False)
        self.grouped = nn.Conv2d(8, 8, 1, groups=2)  # neither plain nor depthwise: not in the table
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = self.grouped(torch.relu(self.dw(self.stem(x))))
        return self.fc(y.mean((2, 3)))


def _specs(capture):
    coupling = graphprune.couple(Net().eval(), example_inputs=torch.randn(2, 3, 16, 16),
                                 scope=graphprune.Scope(capture=capture))
    return layer_specs(coupling.gm, {use.tensor for use in coupling.uses})


def test_exported_and_traced_graphs_give_the_same_layer_specs():
    exported, traced = _specs("export"), _specs("fx")
    assert exported == traced
    assert [s.weight for s in exported] == ["stem.weight", "dw.weight", "fc.weight"]
    dw = exported[1]
    assert dw.depthwise and dw.dilation == (2, 2) and dw.padding == (2, 2) and not dw.bias
    assert exported[0].stride == (2, 2) and exported[0].input_shape == (2, 3, 16, 16)


def test_a_latency_budget_on_a_model_without_timed_layers_is_refused():
    model = nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.Conv2d(8, 8, 1, groups=4)).eval()  # grouped only
    coupling = graphprune.couple(model, example_inputs=torch.randn(1, 4, 8, 8))
    with pytest.raises(graphprune.PlanError, match="needs prunable plain Conv2d"):
        latency_terms(coupling, None, 1, 1.0)
