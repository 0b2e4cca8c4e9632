"""timm models (random weights, no downloads): each shrinks exactly, or is refused by name.

These are the architectures that found the gaps the torchvision zoo did not: TF-style padding (tresnet),
cyclic shifts (Swin), global response norms (ConvNeXt-V2), split attention over stacked branches (SKNet,
ResNeSt), and a layer on one piece of a split (MambaOut). ``python benchmarks/zoo.py --family timm`` runs the whole curated list.
"""

import pytest
import torch

import graphprune

from ..helpers import fingerprint

timm = pytest.importorskip("timm")
pytestmark = pytest.mark.usefixtures("seed")


def _build(name):
    from benchmarks.zoo import spread_norm_statistics

    model = timm.create_model(name, pretrained=False).eval()
    spread_norm_statistics(model)
    return model


# (name, input size, exact_only): LayerNorm models are checked with exact_only, so the rewrite is exact.
MODELS = [
    ("resnet18d", 64, False),
    ("ghostnet_100", 64, False),
    ("hrnet_w18_small", 64, False),
    ("mobilenetv4_conv_small", 64, False),
    ("tresnet_m", 64, False),  # F.pad ("same" padding in its anti-aliased downsampling)
    ("resmlp_12_224", 224, False),  # addcmul in its affine layers
    ("skresnet18", 64, False),  # branches stacked, weighted by a radix x C softmax
    ("resnest14d", 64, False),  # radix x C split summed over radix
    ("swin_tiny_patch4_window7_224", 224, True),  # torch.roll and F.pad
    ("mambaout_femto", 64, True),  # a depthwise conv on one piece of a split
]


@pytest.mark.parametrize("name,size,exact_only", MODELS, ids=[m[0] for m in MODELS])
def test_timm_model_shrinks_exactly(name, size, exact_only):
    model = _build(name)
    x = torch.randn(2, 3, size, size)
    before = fingerprint(model)
    plan = graphprune.plan(model, graphprune.Budget(0.5, exact_only=exact_only), example_inputs=x)
    shrunk = graphprune.apply(model, plan)
    assert plan.exact and sum(len(g.removed) for g in plan.groups) > 0
    assert graphprune.count_params(shrunk) < 0.9 * graphprune.count_params(model)
    assert graphprune.verify(model, plan, shrunk, x) <= 1e-4
    assert fingerprint(model) == before


def test_timm_global_response_norm_keeps_its_channels():
    # GRN divides by a mean over the MLP's hidden channels, so they stay; the residual stream's LayerNorms make
    # the plan approximate, and it says so.
    model = _build("convnextv2_atto")
    x = torch.randn(2, 3, 64, 64)
    with pytest.warns(graphprune.InexactWarning, match="approximate"):
        plan = graphprune.plan(model, 0.5, example_inputs=x)
    shrunk = graphprune.apply(model, plan)
    assert plan.inexact and all("LayerNorm" in reason for reason in plan.inexact)
    hidden = {n: m.out_channels for n, m in model.named_modules() if n.endswith("mlp.fc1")}
    assert hidden and {n: m.out_channels for n, m in shrunk.named_modules() if n.endswith("mlp.fc1")} == hidden
    assert shrunk(x).shape == (2, 1000)
    assert graphprune.count_params(shrunk) < 0.9 * graphprune.count_params(model)


def test_timm_efficient_channel_attention_keeps_the_channels_it_gates():
    # ECA runs a Conv1d along the channel dim, treating channels as a sequence: those channels are pinned (it was
    # refused before), and the rest of the network shrinks exactly.
    model, x = _build("ecaresnet26t"), torch.randn(1, 3, 64, 64)
    plan = graphprune.plan(model, 0.5, example_inputs=x)
    shrunk = graphprune.apply(model, plan)
    assert shrunk.layer1[0].conv3.out_channels == model.layer1[0].conv3.out_channels  # gated by ECA: kept
    assert shrunk.layer1[0].conv1.out_channels < model.layer1[0].conv1.out_channels
    assert graphprune.verify(model, plan, shrunk, x) <= 1e-5