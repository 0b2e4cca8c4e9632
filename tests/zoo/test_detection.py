"""Detectors cannot be traced whole: their backbone is shrunk in place and the detector still runs.

``shrink_submodule`` keeps the backbone's input and output channels, so the heads, the
region proposals and the post-processing see tensors of the shapes they expect. The
proof is end to end: the detector around the shrunk backbone returns the same boxes,
scores and labels as the detector around the masked original backbone.
"""

import copy

import pytest
import torch
import torchvision

import graphprune

DETECTORS = torchvision.models.list_models(module=torchvision.models.detection)
# Small images keep CPU time low; SSD resizes to its fixed 300 (VGG) or 320 (MobileNet) input.
SIZE = 128


def _detector(name):
    kwargs = {"weights": None, "weights_backbone": None}
    if not name.startswith("ssd"):
        kwargs.update(min_size=SIZE, max_size=SIZE)
    # Random weights score below the default thresholds; keep every box so there is something to compare.
    kwargs.update({"box_score_thresh" if "rcnn" in name else "score_thresh": 0.0})
    return torchvision.models.get_model(name, **kwargs).eval()


def _spread_batchnorm(module):
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)


def _check_detector(name):
    torch.manual_seed(0)
    det = _detector(name)
    _spread_batchnorm(det.backbone)
    images = [torch.rand(3, SIZE, SIZE)]
    x = graphprune.capture_inputs(det, "backbone", (images,))

    plan = graphprune.plan(det.backbone, 0.5, example_inputs=x)
    assert plan.removed_channels > 0
    small = graphprune.shrink_submodule(det, "backbone", 0.5, model_inputs=(images,))
    assert small is not det and small.backbone is not det.backbone
    assert graphprune.count_params(small.backbone) < 0.7 * graphprune.count_params(det.backbone)
    assert graphprune.verify(det.backbone, plan, small.backbone, x) <= 1e-4

    masked = copy.deepcopy(det)
    masked.backbone = graphprune.mask(det.backbone, plan)
    with torch.no_grad():
        expected, actual = masked(images), small(images)
    assert len(expected) == len(actual) == 1
    _same_detections(expected[0], actual[0])


def _same_detections(expected, actual, tol=1e-3):
    """The same detections, up to the order of near-tied scores.

    Random weights score many boxes almost equally, so round-off may swap two of them in the
    sorted output, or swap the last kept box for the first dropped one. Every detection
    must be matched (same label, same box and score) except at that cut-off.
    """
    assert expected.keys() == actual.keys()
    assert len(expected["boxes"]) == len(actual["boxes"]) > 0
    torch.testing.assert_close(actual["scores"], expected["scores"], rtol=0, atol=tol)
    cutoff = expected["scores"].min() + tol
    for box, label, score in zip(actual["boxes"], actual["labels"], actual["scores"]):
        if score <= cutoff:
            continue
        close = ((expected["boxes"] - box).abs().amax(dim=1) <= tol * max(1.0, box.abs().max().item())) \
            & (expected["labels"] == label) & ((expected["scores"] - score).abs() <= tol)
        assert close.any(), f"no matching detection for {box.tolist()} (label {int(label)}, score {float(score):.4f})"
    for key in set(expected) - {"boxes", "labels", "scores"}:  # masks, keypoints: per-detection maps
        assert actual[key].shape == expected[key].shape


def test_shrunk_backbone_keeps_the_detector_working():
    _check_detector("fasterrcnn_mobilenet_v3_large_320_fpn")


@pytest.mark.slow
@pytest.mark.parametrize("name", DETECTORS)
def test_every_detector(name):
    _check_detector(name)


def test_submodule_inputs_are_checked():
    det = _detector("fcos_resnet50_fpn")
    with pytest.raises(graphprune.InputError, match="exactly one"):
        graphprune.shrink_submodule(det, "backbone", 0.5)
    with pytest.raises(graphprune.InputError, match="no submodule"):
        graphprune.shrink_submodule(det, "backbone.nope", 0.5, example_inputs=torch.randn(1, 3, 64, 64))
    det.unused = torch.nn.Conv2d(3, 3, 1)
    with pytest.raises(graphprune.InputError, match="never called"):
        graphprune.capture_inputs(det, "unused", ([torch.rand(3, 64, 64)],))
