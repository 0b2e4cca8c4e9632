"""Shrink an ultralytics YOLO detector with graphprune, fine-tune it with ultralytics' own trainer, reload its checkpoint.

Run (CPU, offline, about a minute; nothing is downloaded, the data set is drawn on the fly)::

    pip install -e ".[yolo]"   # ultralytics is AGPL-3.0: an optional extra, never a graphprune dependency
    python examples/yolo_finetune.py [--model yolov8n.yaml] [--ratio 0.5] [--epochs 1] [--imgsz 160]

graphprune's core stays generic; everything ultralytics-specific is here, and it is only what the trainer needs:

- ``ultralytics``' ``DetectionTrainer`` builds its model from the yaml (``get_model``), and when it is given weights
  it loads them with ``intersect_dicts``, which *silently skips* every tensor whose shape differs: handed a shrunk
  model's weights, it would train a dense, randomly initialised model and say nothing. :class:`PrunedTrainer`'s
  ``get_model`` returns the shrunk model itself and refuses weights, so the pruned widths are what trains;
  :func:`finetune` checks that the trained model and the saved checkpoint have exactly the shrunk model's shapes.
- The trainer saves the EMA of the weights, as a whole pickled model in float16 (``last.pt``), and that EMA is the
  model ultralytics deploys. :func:`finetune` returns it in float32, and :func:`reload` loads the checkpoint back the
  way ultralytics does (``YOLO(path)``); the two agree to float16 round-off, and exactly once the trained model is
  rounded to float16 as the checkpoint was (:func:`main` prints both).
- :func:`synthetic_batch` draws the batch dict a YOLO loss takes (``img``, ``batch_idx``, ``cls``, ``bboxes``,
  plus ``masks`` for segmentation and ``keypoints`` for pose), and :func:`train_step` runs the model's own loss
  (``model.loss(batch)``) on it, so a shrunk model's training step can be checked without a data set.

>>> import torch, graphprune
>>> model = yolo_model("yolov8n.yaml")
>>> small = graphprune.shrink(model, 0.5, example_inputs=torch.randn(1, 3, 160, 160))
>>> loss, items = train_step(small, synthetic_batch(small, batch_size=2, imgsz=160))
>>> sorted(items), bool(torch.isfinite(loss).all())
(['box_loss', 'cls_loss', 'dfl_loss'], True)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import graphprune  # noqa: E402

__all__ = ["ultralytics_offline", "yolo_model", "make_dataset", "synthetic_batch", "train_step", "PrunedTrainer",
           "finetune", "reload", "shapes", "stock_transfer", "export_mode", "onnx_roundtrip", "output_tensors", "max_abs_diff", "main"]


def ultralytics_offline():
    """The ``ultralytics`` package, imported offline with its settings in a temporary directory.

    Ultralytics reads both variables once, when it is first imported: offline it never tries a download, and its
    settings file goes to a fresh temporary directory instead of ``~/.config/Ultralytics``. A caller that set them
    first (a test fixture) keeps its own.
    """
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="ultralytics-"))
    import ultralytics

    return ultralytics


def yolo_model(name: str = "yolov8n.yaml") -> nn.Module:
    """The ultralytics model ``name`` (a yaml: random weights, nothing downloaded), in eval mode."""
    return ultralytics_offline().YOLO(name).model.eval()


def make_dataset(root: str | Path, names: dict[int, str], *, n_images: int = 8, seed: int = 0) -> Path:
    """A tiny detection data set in YOLO format under ``root``; returns its data yaml.

    ``n_images`` images of random sizes (64 to 160 px a side), each a noise background with one to three filled
    rectangles of random classes from ``names``, and one label file per image (``class x_center y_center width
    height``, normalised). The same images serve as the validation split: the point is that the trainer runs, not
    what it learns. ``names`` should be the model's (``model.names``), so the data's class count is the head's.
    """
    import cv2

    root = Path(root)
    images, labels = root / "images" / "train", root / "labels" / "train"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    classes = sorted(names)
    for i in range(n_images):
        h, w = (int(v) for v in rng.integers(64, 161, size=2))
        image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        lines = []
        for _ in range(int(rng.integers(1, 4))):
            bw, bh = int(rng.integers(w // 6, w // 2)), int(rng.integers(h // 6, h // 2))
            x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            image[y0:y0 + bh, x0:x0 + bw] = rng.integers(0, 256, size=3, dtype=np.uint8)
            cls = classes[int(rng.integers(0, min(len(classes), 4)))]  # a few classes, so each recurs
            lines.append(f"{cls} {(x0 + bw / 2) / w:.6f} {(y0 + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}")
        cv2.imwrite(str(images / f"{i:03d}.jpg"), image)
        (labels / f"{i:03d}.txt").write_text("\n".join(lines) + "\n")
    data = root / "data.yaml"
    # JSON is YAML, and needs no yaml writer; the names map keeps the model's class count.
    data.write_text(json.dumps({"path": str(root), "train": "images/train", "val": "images/train",
                                "names": {int(k): str(v) for k, v in names.items()}}, indent=1) + "\n")
    return data


def _head(model: nn.Module) -> nn.Module:
    return model.model[-1]


def synthetic_batch(model: nn.Module, *, batch_size: int = 2, imgsz: int = 160, objects: int = 3,
                    seed: int = 0) -> dict[str, torch.Tensor]:
    """The batch dict ``model.loss`` takes, with random images and ``objects`` random boxes per image.

    ``bboxes`` are normalised ``xywh``; a segmentation head also gets ``masks`` (the overlapping format of the
    trainer's default ``overlap_mask=True``: one map per image at a quarter of the resolution, each box filled with
    its 1-based index in that image), a pose head ``keypoints`` (normalised ``x, y`` and a visibility flag, inside
    each box).
    """
    g = torch.Generator().manual_seed(seed)
    n = batch_size * objects
    wh = 0.1 + 0.4 * torch.rand(n, 2, generator=g)
    xy = wh / 2 + (1 - wh) * torch.rand(n, 2, generator=g)
    head = _head(model)
    batch = {"img": torch.rand(batch_size, 3, imgsz, imgsz, generator=g),
             "batch_idx": torch.arange(batch_size).repeat_interleave(objects).float(),
             "cls": torch.randint(0, head.nc, (n, 1), generator=g).float(),
             "bboxes": torch.cat([xy, wh], 1)}
    if hasattr(head, "nm"):  # Segment heads: mask coefficients against prototypes
        size = imgsz // 4
        masks = torch.zeros(batch_size, size, size)
        for k in range(n):
            (x, y), (w, h) = (xy[k] * size).tolist(), (wh[k] * size).tolist()
            masks[k // objects, int(y - h / 2):int(y + h / 2) + 1, int(x - w / 2):int(x + w / 2) + 1] = k % objects + 1
        batch["masks"] = masks
    if hasattr(head, "kpt_shape"):
        kpts, dims = head.kpt_shape
        points = xy[:, None] + (torch.rand(n, kpts, 2, generator=g) - 0.5) * wh[:, None]
        parts = [points] + ([torch.randint(0, 3, (n, kpts, 1), generator=g).float()] if dims == 3 else [])
        batch["keypoints"] = torch.cat(parts, -1)
    return batch


def train_step(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One training step's loss and backward with the model's own criterion (``model.loss``); the caller reads the
    gradients. The model is left in train mode.

    ``model.args`` holds the loss gains (``box``, ``cls``, ``dfl``...); a model built from a yaml has them as a
    dict, which ultralytics' criteria cannot read, so they become the namespace its trainer would attach.
    """
    from ultralytics.cfg import get_cfg

    if not hasattr(getattr(model, "args", None), "box"):
        model.args = get_cfg(dict(getattr(model, "args", None) or {}))
    model.criterion = None  # the criterion caches the head's strides and the model's device: build it for this one
    model.train()
    loss, items = model.loss(batch)
    loss.sum().backward()
    return loss, items


def _trainer_base():
    ultralytics_offline()
    from ultralytics.models.yolo.detect import DetectionTrainer

    return DetectionTrainer


class PrunedTrainer(_trainer_base()):
    """ultralytics' ``DetectionTrainer``, training the model it is given rather than one rebuilt from a yaml.

    The stock ``get_model`` builds ``DetectionModel(cfg)`` at the yaml's widths and loads weights into it with
    ``intersect_dicts``, which drops every tensor whose shape differs without a word; so weights are refused here.
    """

    def __init__(self, model: nn.Module, overrides: dict[str, Any]):
        self.pruned = model
        super().__init__(overrides=overrides)

    def get_model(self, cfg=None, weights=None, verbose=True):
        if weights is not None:
            raise ValueError("PrunedTrainer trains the model it was given; loading other weights into it would "
                             "skip every tensor whose shape differs. Pass pretrained=False and no .pt model.")
        return self.pruned


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Every parameter's and buffer's shape, by name: a model's widths."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def stock_transfer(model: nn.Module) -> tuple[int, int]:
    """What the stock trainer would make of ``model``'s weights: how many of its tensors ultralytics' own loading
    (``DetectionModel(yaml).load(model)``, through ``intersect_dicts``) would copy into the model it rebuilds from
    the yaml, and how many there are. Every one of a shrunk model's tensors whose shape changed is dropped."""
    ultralytics_offline()
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils.torch_utils import intersect_dicts

    rebuilt = DetectionModel(copy.deepcopy(model.yaml), verbose=False)
    return len(intersect_dicts(model.state_dict(), rebuilt.state_dict())), len(model.state_dict())


def finetune(model: nn.Module, data: str | Path, *, epochs: int = 1, imgsz: int = 160, batch: int = 4,
             project: str | Path | None = None, **overrides: Any) -> tuple[nn.Module, Path]:
    """Fine-tune ``model`` (a shrunk ``DetectionModel``, untouched: a copy trains) on the data yaml ``data`` with
    ultralytics' trainer on the CPU; returns the trained model (the EMA the trainer saved, float32, eval mode) and
    the trainer's checkpoint (``last.pt``).

    ``overrides`` go to the trainer (``lr0=``, ``mosaic=``...). Raises if the trained model or the checkpoint does
    not have the given model's shapes, which is what a silently skipped weight load would look like.
    """
    ultralytics_offline()
    from ultralytics.nn.tasks import DetectionModel

    if type(model) is not DetectionModel:
        raise TypeError(f"finetune trains a DetectionModel on a detection data set, not {type(model).__name__}")
    widths = shapes(model)
    project = Path(project) if project is not None else Path(tempfile.mkdtemp(prefix="yolo-finetune-"))
    args = {"model": model.yaml.get("yaml_file", "yolo.yaml"), "data": str(data), "epochs": epochs, "imgsz": imgsz,
            "batch": batch, "workers": 0, "device": "cpu", "amp": False, "plots": False, "pretrained": False,
            "project": str(project), "name": "finetune", "exist_ok": True, "verbose": False,
            # deterministic=True would switch torch to deterministic algorithms for the whole process
            "deterministic": False, "seed": 0, **overrides}
    threads = torch.get_num_threads()  # the trainer sets its own thread count for CPU training
    try:
        trainer = PrunedTrainer(copy.deepcopy(model), args)
        trainer.train()
    finally:
        torch.set_num_threads(threads)
    trained = copy.deepcopy(trainer.ema.ema).float().eval()
    for what, m in (("the trainer's model", trainer.model), ("the trainer's EMA", trained)):
        if shapes(m) != widths:
            raise RuntimeError(f"{what} does not have the shrunk model's shapes")
    checkpoint = Path(trainer.last)
    if shapes(reload(checkpoint)) != widths:
        raise RuntimeError(f"{checkpoint} does not have the shrunk model's shapes")
    return trained, checkpoint


def reload(checkpoint: str | Path) -> nn.Module:
    """The model in an ultralytics checkpoint, loaded as ultralytics loads it (``YOLO(path)``: float32, eval mode).

    The checkpoint pickles the whole model object, so its class and pruned widths come back as saved, without the
    yaml being consulted.
    """
    return ultralytics_offline().YOLO(str(checkpoint)).model.float().eval()


def output_tensors(out: Any) -> list[torch.Tensor]:
    """The tensors in a model's output, however nested (ultralytics returns tuples of tensors and lists)."""
    return [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def export_mode(model):
    """A copy of ``model`` (eval mode) whose head returns what ultralytics exports: the decoded predictions alone
    (and the mask prototypes for segmentation), not the training dict next to them."""
    small = copy.deepcopy(model).eval()
    head = small.model[-1]
    head.export, head.format = True, "onnx"
    return small


def onnx_roundtrip(model, x, path: str | Path) -> dict[str, float]:
    """Export ``model`` in export mode to ONNX at ``path`` (``torch.onnx.export``, dynamo), run it in onnxruntime
    (CPU, one thread) on ``x``; returns the largest absolute difference from PyTorch, the largest absolute PyTorch
    output (the scale to judge it against), the file's bytes and the seconds the export took."""
    import onnxruntime

    small = export_mode(model)
    with torch.no_grad():
        expected = [t.numpy() for t in output_tensors(small(x))]
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on deprecated ops and opset choices
        program = torch.onnx.export(small, (x,), dynamo=True, verbose=False)
    program.save(str(path))
    seconds = time.perf_counter() - start
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    if [g.shape for g in got] != [e.shape for e in expected]:
        raise RuntimeError(f"onnxruntime gave shapes {[g.shape for g in got]}, PyTorch {[e.shape for e in expected]}")
    return {"max_abs_diff": max(float(np.abs(g - e).max()) for g, e in zip(got, expected)),
            "scale": max(float(np.abs(e).max()) for e in expected),
            "bytes": os.path.getsize(path), "export_s": seconds}


def max_abs_diff(a: nn.Module, b: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """The largest absolute difference between the outputs of ``a`` and ``b`` on ``x`` (eval mode, no grad), and the
    largest absolute output of ``a``, to judge it against."""
    with torch.no_grad():
        ya, yb = output_tensors(a.eval()(x)), output_tensors(b.eval()(x))
    if [t.shape for t in ya] != [t.shape for t in yb]:
        raise RuntimeError("the two models' outputs differ in shape")
    return max(float((p - q).abs().max()) for p, q in zip(ya, yb)), max(float(p.abs().max()) for p in ya)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="yolov8n.yaml", help="an ultralytics detection yaml (yolov8n, yolo11n...)")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--imgsz", type=int, default=160)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--images", type=int, default=8, help="synthetic training images")
    parser.add_argument("--out", type=Path, help="where the data set and the runs go (default: a temporary directory)")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    root = args.out or Path(tempfile.mkdtemp(prefix="yolo-finetune-"))
    dense = yolo_model(args.model)
    x = torch.randn(1, 3, args.imgsz, args.imgsz)
    start = time.perf_counter()
    small = graphprune.shrink(dense, args.ratio, example_inputs=x)
    shrink_s = time.perf_counter() - start
    plan = graphprune.plans_of(small)[-1]
    print(f"{args.model}: {graphprune.count_params(dense):,} -> {graphprune.count_params(small):,} parameters "
          f"({type(small).__name__}), shrunk in {shrink_s:.1f} s, verify {graphprune.verify(dense, plan, small, x):.1e}")

    kept, total = stock_transfer(small)
    print(f"the stock trainer (the model rebuilt from its yaml, the shrunk weights loaded) would keep {kept} of "
          f"{total} tensors and train a dense model; PrunedTrainer trains the shrunk one")

    data = make_dataset(root / "data", small.names, n_images=args.images)
    start = time.perf_counter()
    trained, checkpoint = finetune(small, data, epochs=args.epochs, imgsz=args.imgsz, batch=args.batch,
                                   project=root / "runs")
    print(f"fine-tuned {args.epochs} epoch(s) in {time.perf_counter() - start:.1f} s; checkpoint {checkpoint}")
    changed = sum(not torch.equal(p, q) for p, q in zip(small.state_dict().values(), trained.state_dict().values()))
    print(f"trained and checkpoint shapes equal the shrunk model's ({graphprune.count_params(trained):,} parameters); "
          f"{changed} of {len(small.state_dict())} tensors changed in training")

    loaded = reload(checkpoint)
    image = torch.rand(1, 3, args.imgsz, args.imgsz)
    same_precision, scale = max_abs_diff(copy.deepcopy(trained).half().float(), loaded, image)
    float32, _ = max_abs_diff(trained, loaded, image)
    print(f"reloaded {checkpoint.name} ({type(loaded).__name__}): max |difference| from the trained model, both in "
          f"the saved float16 weights: {same_precision:.1e}; from the float32 trained model: {float32:.1e} "
          f"(outputs up to {scale:.0f})")


if __name__ == "__main__":
    main()
