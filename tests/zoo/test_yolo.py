"""Stock ultralytics YOLO (v8, 11, 26; detect, segment, pose), built offline from their yaml with random weights:
``graphprune.shrink(yolo.model, 0.5)`` captures them with torch.export (symbolic tracing cannot), is exact on the
kept channels with the heads' output sizes unchanged, and leaves the original untouched. v8 comes back as its
ultralytics class; 11 and 26 as the rewritten graph, since C2PSA fixes its split widths in one int. (Fine-tuning
with ultralytics' trainer and ONNX deployment come with the YOLO issue.)
"""

import os
import warnings

import pytest
import torch

import graphprune

from ..helpers import fingerprint


@pytest.fixture(scope="module")
def yolo(tmp_path_factory):
    os.environ["YOLO_OFFLINE"] = "1"  # nothing downloaded, and settings written to a temporary directory
    os.environ["YOLO_CONFIG_DIR"] = str(tmp_path_factory.mktemp("ultralytics"))
    return pytest.importorskip("ultralytics").YOLO


# v8's C2f cuts its halves with chunk(2, 1), computed from the tensor, so the ultralytics class comes back.
# 11's and 26's C2PSA cut theirs with split((self.c, self.c), 1): the two halves are pruned apart, one int cannot
# say their new widths, so the rewritten graph comes back, with a warning naming that line.
CASES = [("yolov8n.yaml", "DetectionModel", True), ("yolo11n.yaml", "DetectionModel", False),
         ("yolo26n.yaml", "DetectionModel", False), ("yolo11n-seg.yaml", "SegmentationModel", False),
         ("yolov8n-pose.yaml", "PoseModel", True)]


@pytest.mark.parametrize("name,cls,keeps_class", CASES, ids=[c[0].removesuffix(".yaml") for c in CASES])
def test_stock_yolo_shrinks_exactly(yolo, name, cls, keeps_class):
    torch.manual_seed(0)
    model = yolo(name).model.eval()
    x = torch.randn(1, 3, 160, 160)
    before = fingerprint(model)
    plan = graphprune.plan(model, 0.5, example_inputs=x)
    assert plan.capture == "export" and plan.exact
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", graphprune.RewriteWarning)
        shrunk = graphprune.apply(model, plan)
    assert graphprune.count_params(shrunk) < 0.45 * graphprune.count_params(model)
    assert graphprune.verify(model, plan, shrunk, x) <= 1e-5
    if keeps_class:
        assert type(shrunk).__name__ == cls and type(shrunk) is type(model)
        other = torch.randn(2, 3, 224, 224)  # the class takes other batches and resolutions
        assert graphprune.verify(model, plan, shrunk, (other,)) <= 1e-5
        head, shrunk_head = model.model[-1], shrunk.model[-1]
        assert (shrunk_head.nc, shrunk_head.reg_max, shrunk_head.no) == (head.nc, head.reg_max, head.no)
    else:
        assert isinstance(shrunk, torch.fx.GraphModule)
        said = " ".join(str(w.message) for w in caught if issubclass(w.category, graphprune.RewriteWarning))
        assert f"not {cls}" in said and "split((self.c, self.c), dim=1)" in said
    assert fingerprint(model) == before
    assert not any(isinstance(v, torch.Tensor) and type(v) is not torch.Tensor and not isinstance(v, torch.nn.Parameter)
                   for m in model.modules() for v in vars(m).values())  # no fake tensor left behind by the export


def test_shrunk_yolo_runs_forward_and_backward_in_train_mode(yolo):
    torch.manual_seed(0)
    shrunk = graphprune.shrink(yolo("yolov8n.yaml").model.eval(), 0.5, example_inputs=torch.randn(1, 3, 160, 160))
    shrunk.train()
    outputs = torch.utils._pytree.tree_leaves(shrunk(torch.randn(2, 3, 160, 160)))
    loss = sum(o.float().pow(2).mean() for o in outputs if isinstance(o, torch.Tensor) and o.requires_grad)
    assert isinstance(loss, torch.Tensor)
    loss.backward()
    assert all(p.grad is not None for p in shrunk.parameters() if p.requires_grad)
