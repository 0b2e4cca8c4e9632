"""Prune once, fine-tune under DistributedDataParallel on every rank, with the dense model as teacher.

Run on CPU with two processes (gloo):

    torchrun --nproc_per_node=2 examples/ddp_finetune.py --dense-epochs 8 --epochs 4 --ratio 0.5

Each rank trains on its own shard of scikit-learn's digits. The plan is made on rank 0 and broadcast
(graphprune.distributed.plan_on_all_ranks), so every rank builds the same smaller model; at the end
the ranks compare a hash of their weights, which DDP keeps identical.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import graphprune  # noqa: E402
from examples.digits import Digits, accuracy, finetune_distilled, load_digits_32, train  # noqa: E402
from examples.models import MODELS  # noqa: E402
from graphprune.workflows.distributed import check_same_plan, plan_on_all_ranks, sync_buffers  # noqa: E402


def _shard(data: Digits, rank: int, world: int) -> Digits:
    """Every rank gets the same number of examples, so all ranks run the same number of DDP steps."""
    n = len(data.y_train) // world * world
    return Digits(data.x_train[rank:n:world], data.y_train[rank:n:world], data.x_test, data.y_test)


def _gather_hex(digest: bytes) -> list[str]:
    mine = torch.frombuffer(bytearray(digest), dtype=torch.uint8)
    everyone = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(everyone, mine)
    return [d.numpy().tobytes().hex() for d in everyone]


def _weights_digest(model: torch.nn.Module) -> bytes:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.digest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="vgg8")
    parser.add_argument("--dense-epochs", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=4, help="fine-tuning epochs after pruning")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--importance", default="l2")
    parser.add_argument("--out", type=Path, help="write a JSON summary here (rank 0)")
    args = parser.parse_args()

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    data = _shard(load_digits_32(), rank, world)
    x = data.x_test[:1]

    torch.manual_seed(0)
    dense = DistributedDataParallel(MODELS[args.model]())
    train(dense, data, epochs=args.dense_epochs)
    dense = dense.module.eval()
    sync_buffers(dense)  # DDP syncs parameters; BatchNorm statistics come from rank 0

    the_plan = plan_on_all_ranks(dense, args.ratio, example_inputs=x, importance=args.importance)
    check_same_plan(the_plan)
    small = graphprune.apply(dense, the_plan)
    pruned_accuracy = accuracy(small, data)
    student = DistributedDataParallel(small)
    finetune_distilled(student, dense, data, epochs=args.epochs)
    sync_buffers(small)

    summary = {
        "model": args.model,
        "world_size": world,
        "ratio": args.ratio,
        "macs_before": graphprune.count_macs(dense, x),
        "macs_after": graphprune.count_macs(small, x),
        "accuracy_dense": accuracy(dense, data),
        "accuracy_pruned": pruned_accuracy,
        "accuracy_after": accuracy(small, data),
        "plan_digests": _gather_hex(hashlib.sha256(the_plan.to_json().encode()).digest()),
        "weight_digests": _gather_hex(_weights_digest(small)),
    }
    if rank == 0:
        print(json.dumps(summary, indent=1))
        if args.out:
            args.out.write_text(json.dumps(summary, indent=1))
    dist.destroy_process_group()
    if len(set(summary["weight_digests"])) != 1:
        raise SystemExit("the ranks ended with different weights")


if __name__ == "__main__":
    main()
