"""torch.nn layers that carry channels, each on a small model: exact against the masked original, or refused
by name. Models that chain them the way real networks do (a U-Net, an LSTM classifier over conv features,
an ESPCN super-resolution net) shrink exactly too.
"""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import graphprune

from ..helpers import fingerprint, shrinks_exactly


# -- transposed convolutions ------------------------------------------------------------------------------

class Decoder(nn.Module):
    def __init__(self, dims=2, groups=1, output_padding=0, depthwise=False):
        super().__init__()
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
        up = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[dims]
        norm = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims]
        self.enc = conv(3, 12, 3, padding=1)
        self.bn = norm(12)
        if depthwise:
            self.up = up(12, 24, 3, stride=2, padding=1, output_padding=output_padding, groups=12)
        else:
            self.up = up(12, 8, 3, stride=2, padding=1, output_padding=output_padding, groups=groups, dilation=1)
        self.head = conv(self.up.out_channels, 2, 1)

    def forward(self, x):
        return self.head(F.relu(self.up(F.relu(self.bn(self.enc(x))))))


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("capture", ["fx", "export"])
def test_conv_transposeshrinks_exactly(dims, capture):
    x = torch.randn(2, 3, *[6] * dims)
    plan, shrunk = shrinks_exactly(Decoder(dims, output_padding=1), x, capture=capture)
    up = shrunk.up
    assert (up.in_channels, up.out_channels) == (6, 4) and up.weight.shape[:2] == (6, 4)
    assert shrunk(x).shape == (2, 2, *[12] * dims)


@pytest.mark.parametrize("capture", ["fx", "export"])
def test_grouped_conv_transpose_prunes_whole_positions_of_every_group(capture):
    x = torch.randn(2, 3, 6, 6)
    plan, shrunk = shrinks_exactly(Decoder(groups=4), x, capture=capture)
    if capture == "fx":
        up = shrunk.up
        assert up.groups == 4 and up.in_channels % 4 == 0 and up.out_channels % 4 == 0
        assert up.in_channels < 12 and up.out_channels < 8


def test_depthwise_conv_transpose_passes_channels_through():
    x = torch.randn(2, 3, 6, 6)
    plan, shrunk = shrinks_exactly(Decoder(depthwise=True), x)
    up = shrunk.up
    assert up.groups == up.in_channels == 6 and up.out_channels == 12


class FunctionalUp(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Conv2d(3, 10, 3, padding=1)
        self.w = nn.Parameter(torch.randn(10, 6, 2, 2) * 0.3)
        self.b = nn.Parameter(torch.randn(6) * 0.1)
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.head(F.relu(F.conv_transpose2d(F.relu(self.enc(x)), self.w, self.b, stride=2)))


def test_functional_conv_transpose_over_the_models_own_tensors():
    plan, shrunk = shrinks_exactly(FunctionalUp(), torch.randn(2, 3, 5, 5))
    assert shrunk.w.shape == (5, 3, 2, 2) and shrunk.b.shape == (3,)


class UNet(nn.Module):
    """Two levels: conv blocks down, transposed convs up, skip concatenations."""

    def __init__(self, c=8):
        super().__init__()

        def block(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                                 nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())

        self.down1, self.down2, self.bottom = block(3, c), block(c, 2 * c), block(2 * c, 4 * c)
        self.up2 = nn.ConvTranspose2d(4 * c, 2 * c, 2, stride=2)
        self.dec2 = block(4 * c, 2 * c)
        self.up1 = nn.ConvTranspose2d(2 * c, c, 2, stride=2)
        self.dec1 = block(2 * c, c)
        self.out = nn.Conv2d(c, 3, 1)

    def forward(self, x):
        d1 = self.down1(x)
        d2 = self.down2(F.max_pool2d(d1, 2))
        b = self.bottom(F.max_pool2d(d2, 2))
        u2 = self.dec2(torch.cat([self.up2(b), d2], 1))
        u1 = self.dec1(torch.cat([self.up1(u2), d1], 1))
        return self.out(u1)


@pytest.mark.parametrize("capture", ["fx", "export"])
def test_unet_with_transposed_conv_decodersshrinks_exactly(capture):
    x = torch.randn(2, 3, 16, 16)
    plan, shrunk = shrinks_exactly(UNet(), x, capture=capture)
    assert type(shrunk) is UNet
    assert shrunk.up2.out_channels == shrunk.down2[0].out_channels == 8
    assert shrunk.up2.in_channels == shrunk.bottom[3].out_channels == 16
    assert shrunk(torch.randn(1, 3, 32, 32)).shape == (1, 3, 32, 32)
    assert graphprune.count_macs(shrunk, x) < 0.35 * graphprune.count_macs(UNet(), x)


class FunctionalGroupedUp(nn.Module):
    """F.conv_transpose2d with groups: grouped (4) and depthwise (groups == channels)."""

    def __init__(self, depthwise):
        super().__init__()
        self.depthwise = depthwise
        self.enc = nn.Conv2d(3, 8, 3, padding=1)
        self.w = nn.Parameter(torch.randn(8, 2, 2, 2) * 0.3)  # in x out/groups x k x k
        self.b = nn.Parameter(torch.randn(16 if depthwise else 8) * 0.1)
        self.head = nn.Conv2d(16 if depthwise else 8, 2, 1)

    def forward(self, x):
        groups = 8 if self.depthwise else 4
        return self.head(F.relu(F.conv_transpose2d(F.relu(self.enc(x)), self.w, self.b, stride=2, groups=groups)))


@pytest.mark.parametrize("depthwise", [False, True])
def test_functional_grouped_and_depthwise_conv_transpose(depthwise):
    plan, shrunk = shrinks_exactly(FunctionalGroupedUp(depthwise), torch.randn(2, 3, 5, 5))
    assert shrunk.w.shape[0] == 4 and shrunk.w.shape[1] == 2 if depthwise else shrunk.w.shape[0] % 4 == 0


# -- channels to space and back, channel shuffles ----------------------------------------------------------

class ESPCN(nn.Module):
    """Efficient sub-pixel super-resolution: convs, then a conv to C*r*r channels and a PixelShuffle."""

    def __init__(self, r=3, colours=3):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(colours, 32, 5, padding=2), nn.Tanh(), nn.Conv2d(32, 16, 3, padding=1),
                                  nn.Tanh())
        self.to_pixels = nn.Conv2d(16, 8 * r * r, 3, padding=1)
        self.shuffle = nn.PixelShuffle(r)
        self.out = nn.Conv2d(8, colours, 3, padding=1)

    def forward(self, x):
        return self.out(self.shuffle(self.to_pixels(self.body(x))))


@pytest.mark.parametrize("capture", ["fx", "export"])
def test_espcn_with_pixel_shuffleshrinks_exactly(capture):
    x = torch.randn(2, 3, 6, 6)
    plan, shrunk = shrinks_exactly(ESPCN(), x, capture=capture)
    assert shrunk.to_pixels.out_channels == 4 * 9 and shrunk.out.in_channels == 4  # whole r*r groups went
    assert shrunk(x).shape == (2, 3, 18, 18)


class Unshuffled(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.down = nn.PixelUnshuffle(2)
        self.head = nn.Conv2d(24, 4, 1)

    def forward(self, x):
        return self.head(self.down(F.relu(self.stem(x))))


@pytest.mark.parametrize("capture", ["fx", "export"])
def test_pixel_unshuffle_repeats_each_channel_into_its_block(capture):
    plan, shrunk = shrinks_exactly(Unshuffled(), torch.randn(2, 3, 8, 8), capture=capture)
    assert shrunk.stem.out_channels == 3 and shrunk.head.in_channels == 12


class Shuffled(nn.Module):
    """ShuffleNet's grouped convs around a ChannelShuffle."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 3, padding=1)
        self.bn = nn.BatchNorm2d(12)
        self.shuffle = nn.ChannelShuffle(3)
        self.head = nn.Conv2d(12, 4, 1)

    def forward(self, x):
        return self.head(self.shuffle(F.relu(self.bn(self.stem(x)))))


@pytest.mark.parametrize("capture", ["fx", "export"])
def test_channel_shuffle_keeps_its_groups_a_grid(capture):
    plan, shrunk = shrinks_exactly(Shuffled(), torch.randn(2, 3, 6, 6), capture=capture)
    assert shrunk.stem.out_channels % 3 == 0 and shrunk.stem.out_channels < 12


class FoldUnfold(nn.Module):
    """Unfold into patches, scale them, fold them back (overlap-add)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.unfold = nn.Unfold(2, stride=2)
        self.fold = nn.Fold((8, 8), 2, stride=2)
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        patches = self.unfold(F.relu(self.stem(x)))  # N x 6*4 x L
        return self.head(self.fold(patches * 0.5))


def test_fold_and_unfold_move_channels_to_patches_and_back():
    plan, shrunk = shrinks_exactly(FoldUnfold(), torch.randn(2, 3, 8, 8))
    assert shrunk.stem.out_channels == 3 and shrunk.head.in_channels == 3


# -- per-channel activations and norms, gates, bilinear ------------------------------------------------------

class PerChannel(nn.Module):
    def __init__(self, norm):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = norm
        self.act = nn.PReLU(8)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.head(self.act(self.norm(self.stem(x))))


@pytest.mark.parametrize("norm", [
    nn.InstanceNorm2d(8), nn.InstanceNorm2d(8, affine=True), nn.InstanceNorm2d(8, affine=True, track_running_stats=True),
    nn.Identity()], ids=["instance", "instance-affine", "instance-tracked", "prelu-only"])
@pytest.mark.parametrize("capture", ["fx", "export"])
def test_instance_norm_and_prelu_slice_per_channel(norm, capture):
    plan, shrunk = shrinks_exactly(PerChannel(norm), torch.randn(2, 3, 6, 6), capture=capture)
    if capture == "fx":
        assert shrunk.act.num_parameters == 4 and shrunk.act.weight.shape == (4,)


class LRN(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.lrn = nn.LocalResponseNorm(3)
        self.mid = nn.Conv2d(8, 8, 1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.head(F.relu(self.mid(self.lrn(F.relu(self.stem(x))))))


def test_local_response_norm_keeps_the_channels_it_normalises():
    plan, shrunk = shrinks_exactly(LRN(), torch.randn(2, 3, 6, 6))
    assert shrunk.stem.out_channels == 8 and shrunk.mid.out_channels == 4
    assert len(next(g for g in plan.groups if g.sources == ["stem"]).pinned) == 8


class Gated(nn.Module):
    def __init__(self, module):
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 3, padding=1)
        self.glu = nn.GLU(1) if module else None
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        y = self.stem(x)
        return self.head(self.glu(y) if self.glu is not None else F.glu(y, 1))


@pytest.mark.parametrize("module", [True, False])
@pytest.mark.parametrize("capture", ["fx", "export"])
def test_glu_joins_the_halves(module, capture):
    plan, shrunk = shrinks_exactly(Gated(module), torch.randn(2, 3, 6, 6), capture=capture)
    assert shrunk.stem.out_channels == 6 and shrunk.head.in_channels == 3


class Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(5, 8), nn.Linear(4, 6)
        self.bilinear = nn.Bilinear(8, 6, 10)
        self.head = nn.Linear(10, 3)

    def forward(self, x, y):
        return self.head(torch.relu(self.bilinear(torch.relu(self.a(x)), torch.relu(self.b(y)))))


def test_bilinear_consumes_both_inputs_and_produces_its_features():
    plan, shrunk = shrinks_exactly(Pair(), (torch.randn(3, 5), torch.randn(3, 4)))
    assert shrunk.bilinear.weight.shape == (5, 4, 3)
    assert (shrunk.bilinear.in1_features, shrunk.bilinear.in2_features, shrunk.bilinear.out_features) == (4, 3, 5)


# -- embedding tables -------------------------------------------------------------------------------------

class Bag(nn.Module):
    def __init__(self, mode, tied=False):
        super().__init__()
        self.bag = nn.EmbeddingBag(20, 8, mode=mode)
        self.hidden = nn.Linear(8, 8)
        self.head = nn.Linear(8, 20, bias=False)
        if tied:
            self.head.weight = self.bag.weight  # the output layer reads the table (weight tying)

    def forward(self, ids, offsets):
        return self.head(torch.relu(self.hidden(self.bag(ids, offsets))))


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_embedding_bag_columns_are_channels(mode):
    ids, offsets = torch.randint(0, 20, (10,)), torch.tensor([0, 3, 7])
    plan, shrunk = shrinks_exactly(Bag(mode), (ids, offsets))
    assert shrunk.bag.embedding_dim == 4 and shrunk.bag.weight.shape == (20, 4)


class TiedEmbedding(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.mix = nn.Linear(8, 8)
        self.head = nn.Linear(8, 20, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        h = self.embed(ids)
        return self.head(h + torch.relu(self.mix(h)))


def test_embedding_tied_to_the_output_layer_shrinks_both_at_once():
    plan, shrunk = shrinks_exactly(TiedEmbedding(), torch.randint(0, 20, (2, 5)))
    assert shrunk.head.weight is shrunk.embed.weight and shrunk.embed.weight.shape == (20, 4)
    assert shrunk.head.in_features == 4


# -- attention with kdim / vdim ------------------------------------------------------------------------------

class CrossAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_in, self.k_in, self.v_in = nn.Linear(5, 8), nn.Linear(5, 6), nn.Linear(5, 4)
        self.attn = nn.MultiheadAttention(8, 2, kdim=6, vdim=4, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, q, kv):
        out, _ = self.attn(self.q_in(q), torch.relu(self.k_in(kv)), torch.relu(self.v_in(kv)), need_weights=False)
        return self.head(out)


def test_multihead_attention_with_kdim_and_vdim_prunes_heads_and_the_key_and_value_streams():
    plan, shrunk = shrinks_exactly(CrossAttention(), (torch.randn(2, 3, 5), torch.randn(2, 4, 5)))
    attn = shrunk.attn
    assert attn.num_heads == 1 and attn.embed_dim == 4
    assert (attn.kdim, attn.vdim) == (3, 2) == (shrunk.k_in.out_features, shrunk.v_in.out_features)


# -- recurrent layers ------------------------------------------------------------------------------------------

class Recurrent(nn.Module):
    def __init__(self, kind, **kwargs):
        super().__init__()
        self.lstm = kind == "LSTM"
        self.embed = nn.Linear(5, 6)
        self.rnn = getattr(nn, kind)(6, 8, batch_first=True, **kwargs)
        width = (kwargs.get("proj_size") or 8) * (2 if kwargs.get("bidirectional") else 1)
        self.head = nn.Linear(width, 3)
        self.from_state = nn.Linear(kwargs.get("proj_size") or 8, 3)

    def forward(self, x):
        out, state = self.rnn(torch.relu(self.embed(x)))
        h = state[0] if self.lstm else state  # (h_n, c_n) for an LSTM
        return self.head(out[:, -1]) + self.from_state(h[-1])


RECURRENT = [("RNN", {}), ("RNN", {"nonlinearity": "relu", "num_layers": 2}), ("GRU", {"num_layers": 2}),
             ("GRU", {"bidirectional": True}), ("LSTM", {}), ("LSTM", {"num_layers": 2, "bidirectional": True}),
             ("LSTM", {"proj_size": 4}), ("LSTM", {"proj_size": 4, "num_layers": 2, "bidirectional": True})]


@pytest.mark.parametrize("kind,kwargs", RECURRENT, ids=[f"{k}-{'-'.join(map(str, v.items()))}" for k, v in RECURRENT])
def test_recurrent_layers_lose_hidden_units_exactly(kind, kwargs):
    plan, shrunk = shrinks_exactly(Recurrent(kind, **kwargs), torch.randn(2, 7, 5))
    rnn = shrunk.rnn
    assert rnn.hidden_size == 4 and rnn.input_size == 3
    if kwargs.get("proj_size"):
        assert rnn.proj_size == 2
    y = torch.randn(3, 9, 5)  # other batch and length; the flat weights were refreshed
    assert shrunk(y).shape == (3, 3)


class LSTMClassifier(nn.Module):
    """Conv features over time, an LSTM over them, a classifier on the last state."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv1d(4, 16, 3, padding=1), nn.BatchNorm1d(16), nn.ReLU(),
                                      nn.Conv1d(16, 16, 3, padding=1), nn.BatchNorm1d(16), nn.ReLU())
        self.lstm = nn.LSTM(16, 12, num_layers=2, batch_first=True)
        self.classifier = nn.Linear(12, 5)

    def forward(self, x):
        seq = self.features(x).transpose(1, 2)  # N x T x C
        _, (h, _) = self.lstm(seq)
        return self.classifier(h[-1])


def test_lstm_classifier_over_conv_featuresshrinks_exactly():
    plan, shrunk = shrinks_exactly(LSTMClassifier(), torch.randn(2, 4, 10))
    assert shrunk.lstm.input_size == shrunk.features[3].out_channels == 8
    assert shrunk.lstm.hidden_size == 6 and shrunk.classifier.in_features == 6


def test_recurrent_layer_given_an_initial_state_keeps_its_units():
    class WithState(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = nn.GRU(4, 6, batch_first=True)
            self.head = nn.Linear(6, 2)

        def forward(self, x, h0):
            return self.head(self.gru(x, h0)[0])

    plan = graphprune.plan(WithState(), 0.5, example_inputs=(torch.randn(2, 3, 4), torch.randn(1, 2, 6)))
    assert not any(g.removed for g in plan.groups if "gru" in g.sources)


class Stepper(nn.Module):
    """A cell unrolled over a fixed number of steps, its state fed back."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.embed = nn.Linear(5, 6)
        self.cell = getattr(nn, kind)(6, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        state = None
        for t in range(x.shape[1] if not isinstance(x, torch.fx.Proxy) else 4):
            step = torch.relu(self.embed(x[:, t]))
            state = self.cell(step) if state is None else self.cell(step, state)
        return self.head(state[0] if self.kind == "LSTMCell" else state)


@pytest.mark.parametrize("kind", ["RNNCell", "GRUCell", "LSTMCell"])
def test_recurrent_cells_fed_their_own_state_lose_hidden_units_exactly(kind):
    plan, shrunk = shrinks_exactly(Stepper(kind), torch.randn(2, 4, 5))
    assert shrunk.cell.hidden_size == 4 and shrunk.cell.input_size == 3 and shrunk.head.in_features == 4


# -- the rest of torch.nn: element-wise, normalised, lazy, refused ---------------------------------------------

@pytest.mark.parametrize("layer", [nn.Hardshrink(0.1), nn.Softshrink(0.1), nn.Threshold(0.1, 0.5), nn.RReLU(),
                                   nn.Softmin(dim=2), nn.Softmax2d()], ids=lambda m: type(m).__name__)
def test_more_element_wise_and_softmax_layers(layer):
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), layer, nn.Conv2d(8, 4, 1), nn.ReLU(),
                        nn.Conv2d(4, 2, 1))
    plan, shrunk = shrinks_exactly(net, torch.randn(2, 3, 6, 6))
    if isinstance(layer, nn.Softmax2d):  # a softmax over channels keeps them
        assert shrunk[0].out_channels == 8 and shrunk[3].out_channels == 2
    else:
        assert shrunk[0].out_channels == 4


def test_lp_pool_3d_and_rms_norm():
    net = nn.Sequential(nn.Conv3d(3, 8, 3, padding=1), nn.LPPool3d(2, 2), nn.Conv3d(8, 4, 1))
    shrinks_exactly(net, torch.randn(2, 3, 4, 4, 4))
    mlp = nn.Sequential(nn.Linear(5, 8), nn.RMSNorm(8), nn.Linear(8, 3))
    torch.manual_seed(0)
    plan = graphprune.plan(mlp, 0.5, example_inputs=torch.randn(4, 5))
    assert not plan.exact and any("RMSNorm normalises" in r for r in plan.inexact)
    shrunk = graphprune.apply(mlp, plan)
    assert shrunk[1].normalized_shape == (4,) and shrunk[1].weight.shape == (4,)
    exact = graphprune.plan(mlp, graphprune.Budget(ratio=0.5, exact_only=True), example_inputs=torch.randn(4, 5))
    assert not any(g.removed for g in exact.groups)


def test_a_lazy_layer_once_initialised_is_its_concrete_layer():
    net = nn.Sequential(nn.LazyConv2d(8, 3, padding=1), nn.LazyBatchNorm2d(), nn.ReLU(), nn.LazyConv2d(2, 1))
    net(torch.randn(1, 3, 6, 6))  # initialises: each becomes Conv2d / BatchNorm2d
    plan, shrunk = shrinks_exactly(net, torch.randn(2, 3, 6, 6))
    assert type(shrunk[0]) is nn.Conv2d and shrunk[0].out_channels == 4


class Refused(nn.Module):
    """``maker`` makes 8 channels that reach ``layer``; a layer of two inputs gets the channels twice."""

    def __init__(self, maker, layer, pair=False):
        super().__init__()
        self.make, self.layer, self.pair = maker, layer, pair

    def forward(self, x):
        y = self.make(x)
        return self.layer(y, 2 * y + 1) if self.pair else self.layer(y)


REFUSED_LAYERS = {  # name: (model, example input)
    "FractionalMaxPool2d": (lambda: Refused(nn.Conv2d(3, 8, 1), nn.FractionalMaxPool2d(2, output_size=3)),
                            (2, 3, 6, 6)),
    "FractionalMaxPool3d": (lambda: Refused(nn.Conv3d(3, 8, 1), nn.FractionalMaxPool3d(2, output_size=2)),
                            (2, 3, 4, 4, 4)),
    "CosineSimilarity": (lambda: Refused(nn.Linear(4, 8), nn.CosineSimilarity(1), pair=True), (2, 4)),
    "PairwiseDistance": (lambda: Refused(nn.Linear(4, 8), nn.PairwiseDistance(), pair=True), (2, 4)),
    "TransformerEncoderLayer": (lambda: Refused(nn.Linear(4, 8), nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)),
                                (2, 3, 4)),
}


@pytest.mark.parametrize("name", sorted(REFUSED_LAYERS))
def test_a_refused_layer_is_refused_by_name_and_the_model_kept(name):
    from graphprune.report.nn_coverage import REFUSED

    assert name in REFUSED
    factory, shape = REFUSED_LAYERS[name]
    model = factory().eval()
    before = fingerprint(model)
    with pytest.raises(graphprune.UnsupportedOpError) as info:
        graphprune.shrink(model, 0.5, example_inputs=torch.randn(shape), scope=graphprune.Scope(capture="fx"))
    assert "target=layer" in str(info.value) and "FX node" in str(info.value)
    assert fingerprint(model) == before


def test_every_torch_nn_module_class_is_classified():
    from graphprune.report.nn_coverage import nn_coverage

    unknown = [name for name, status, _ in nn_coverage() if status == "unclassified"]
    assert not unknown, f"classify these torch.nn classes in graphprune/report/nn_coverage.py: {unknown}"
    from graphprune.report.nn_coverage import REFUSED

    registry = graphprune.default_registry()
    ruled = [name for name in REFUSED if registry.rule_for_class(getattr(nn, name)) is not None]
    assert not ruled, f"these have rules now: take them out of REFUSED: {ruled}"


class RMSAndPower(nn.Module):
    """F.rms_norm over the features and an ``x ** 2`` gate, as ViTs with RMSNorm and poolformer v2 write them."""

    def __init__(self):
        super().__init__()
        self.up = nn.Linear(5, 8)
        self.weight = nn.Parameter(torch.rand(8) + 0.5)
        self.mid = nn.Linear(8, 6)
        self.down = nn.Linear(6, 3)

    def forward(self, x):
        h = F.rms_norm(self.up(x), (8,), self.weight, 1e-6)
        return self.down(self.mid(h) ** 2)


@pytest.mark.parametrize("capture", ["fx", "export"])
def test_functional_rms_norm_and_the_power_operator(capture):
    model = RMSAndPower().eval()
    x = torch.randn(4, 5)
    plan = graphprune.plan(model, 0.5, example_inputs=x, scope=graphprune.Scope(capture=capture))
    assert any("RMSNorm normalises" in r for r in plan.inexact)  # the RMSNorm's width is approximate, and says so
    with warnings.catch_warnings():  # the literal (8,) fixes a width in Python: the exported path says so
        warnings.simplefilter("ignore", graphprune.RewriteWarning)
        shrunk = graphprune.apply(model, plan)
    assert isinstance(shrunk, torch.fx.GraphModule)  # with (8,) rewritten, on either path
    assert shrunk.mid.weight.shape == (3, 4) and shrunk.weight.shape == (4,)
    exact = graphprune.plan(model, graphprune.Budget(ratio=0.5, exact_only=True), example_inputs=x,
                            scope=graphprune.Scope(capture=capture))
    small = graphprune.apply(model, exact)
    assert small.mid.out_features == 3 and small.up.out_features == 8
    assert graphprune.verify(model, exact, small, x) <= 1e-5


class QKVChunk(nn.Module):
    """EfficientViT's LiteMLA layout: one conv makes q, k and v for every head; a reshape to heads x 3*dim, then
    a chunk of the inner axis into q, k and v (here combined element-wise, per head)."""

    def __init__(self, heads=4, dim=4):
        super().__init__()
        self.dim = dim
        self.stem = nn.Conv2d(3, 8, 1)
        self.qkv = nn.Conv2d(8, 3 * heads * dim, 1)
        self.proj = nn.Conv2d(heads * dim, 8, 1)

    def forward(self, x):
        B, _, H, W = x.shape
        qkv = self.qkv(F.relu(self.stem(x))).reshape(B, -1, 3 * self.dim, H * W).transpose(-1, -2)
        q, k, v = qkv.chunk(3, dim=-1)
        out = F.relu(q) * torch.sigmoid(k) + v  # B x heads x HW x dim
        return self.proj(out.transpose(-1, -2).reshape(B, -1, H, W))


@pytest.mark.parametrize("capture", ["fx", "export"])
def test_chunk_of_one_axis_of_a_heads_block_is_exact(capture):
    """Was refused ("splitting dim 3, which is part of a 2-D channel block"). Now exact: the chunk keeps each head's
    q, k and v whole, and the reshape's head count is a lone -1, which the kept heads fill, so whole heads go."""
    plan, shrunk = shrinks_exactly(QKVChunk(), torch.randn(2, 3, 4, 4), capture=capture)
    assert shrunk.stem.weight.shape[0] == 4 and shrunk.qkv.weight.shape[0] == 24 and shrunk.proj.weight.shape[1] == 8


class DFL(nn.Module):
    """YOLO's distribution focal loss head: a fixed 1x1 conv over a ``bins x sides`` view of a conv's outputs,
    which must keep every one of them (they are box coordinates)."""

    def __init__(self, bins=4):
        super().__init__()
        self.bins = bins
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.box = nn.Conv2d(8, 4 * bins, 1)
        self.dfl = nn.Conv2d(bins, 1, 1, bias=False)
        self.dfl.weight.data[:] = torch.arange(bins, dtype=torch.float).view(1, bins, 1, 1)

    def forward(self, x):
        y = self.box(F.relu(self.stem(x)))
        b, _, h, w = y.shape
        y = y.view(b, 4, self.bins, h * w).transpose(2, 1).softmax(1)
        return self.dfl(y).view(b, 4, h * w)


class ECA(nn.Module):
    """Efficient channel attention: a k=3 Conv1d along the channel axis (it mixes neighbouring channels)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.eca = nn.Conv1d(1, 1, 3, padding=1, bias=False)
        self.mid = nn.Conv2d(8, 8, 1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = F.relu(self.stem(x))
        gate = self.eca(y.mean((2, 3)).unsqueeze(1)).transpose(-1, -2).unsqueeze(-1).sigmoid()  # N x C x 1 x 1
        return self.head(F.relu(self.mid(y * gate)))


@pytest.mark.parametrize("capture", ["fx", "export"])
def test_a_pointwise_conv_over_a_view_passes_channels_on_its_spatial_dims(capture):
    plan, shrunk = shrinks_exactly(DFL(), torch.randn(2, 3, 4, 4), capture=capture)
    assert shrunk.box.weight.shape[0] == 16 and shrunk.stem.weight.shape[0] == 4  # box outputs all kept


@pytest.mark.parametrize("capture", ["fx", "export"])
def test_a_conv_along_the_channel_axis_pins_those_channels_instead_of_refusing(capture):
    plan, shrunk = shrinks_exactly(ECA(), torch.randn(2, 3, 4, 4), capture=capture)
    assert shrunk.stem.weight.shape[0] == 8 and shrunk.mid.weight.shape[0] == 4
