"""Distributed fine-tuning: one plan on every rank, identical weights after DDP steps (2 gloo processes on CPU)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

import graphprune
from graphprune.workflows.distributed import check_same_plan, plan_on_all_ranks, shrink_distributed, sync_buffers

from examples.models import ResNet20

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        x = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
        torch.manual_seed(rank)  # the ranks start from different weights, so plans made locally differ
        model = ResNet20(widths=(4, 8, 16), blocks=1)
        local = graphprune.plan(model, 0.5, example_inputs=x)
        the_plan = plan_on_all_ranks(model, 0.5, example_inputs=x)
        digest = check_same_plan(the_plan)
        try:
            check_same_plan(local)
            local_refused = False
        except graphprune.PlanError:
            local_refused = True

        ddp = DistributedDataParallel(graphprune.apply(model, the_plan))  # starts from rank 0's weights
        start = {k: v.clone() for k, v in ddp.module.state_dict().items()}
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
        data = torch.Generator().manual_seed(100 + rank)  # each rank sees its own batches
        for _ in range(4):
            batch = torch.randn(8, 1, 16, 16, generator=data)
            labels = torch.randint(0, 10, (8,), generator=data)
            loss = torch.nn.functional.cross_entropy(ddp(batch), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
        params = {name: p.detach().clone() for name, p in ddp.module.named_parameters()}
        sync_buffers(ddp.module)  # the last forward updated each rank's BatchNorm statistics from its own batch

        # A rank whose model has another architecture makes every rank fail, none hangs.
        other = ResNet20(widths=(4, 8, 16) if rank == 0 else (4, 8, 12), blocks=1)
        try:
            shrink_distributed(other, 0.5, example_inputs=x)
            mismatch = "none"
        except graphprune.PlanError as exc:
            mismatch = str(exc).splitlines()[0]
        torch.save({"plan": the_plan.to_json(), "local": local.to_json(), "digest": digest, "local_refused": local_refused,
                    "start": start, "params": params, "end": ddp.module.state_dict(), "mismatch": mismatch}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_plan_is_broadcast_and_ddp_ranks_stay_identical(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["plan"] == r1["plan"] == r0["local"]  # everyone got rank 0's plan
    assert r1["local"] != r0["local"]  # ... which rank 1 would not have made
    assert r0["digest"] == r1["digest"] and r0["local_refused"] and r1["local_refused"]
    assert r0["params"].keys() == r1["params"].keys()
    for name, tensor in r0["params"].items():  # DDP keeps the parameters identical by itself
        assert torch.equal(tensor, r1["params"][name]), name
    assert r0["end"].keys() == r1["end"].keys()
    for name, tensor in r0["end"].items():
        assert torch.equal(tensor, r1["end"][name]), name
    assert any(not torch.equal(r0["start"][k], r0["end"][k]) for k in r0["start"])  # training did move the weights
    assert "ranks [1]" in r0["mismatch"]
    assert r0["mismatch"] != "none" and r1["mismatch"] != "none"


def test_ddp_finetune_example_under_torchrun(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           str(ROOT / "examples" / "ddp_finetune.py"), "--dense-epochs", "1", "--epochs", "1", "--ratio", "0.5",
           "--out", str(tmp_path / "summary.json")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert len(set(summary["weight_digests"])) == 1  # identical weights on both ranks
    assert len(set(summary["plan_digests"])) == 1
    assert summary["macs_after"] < 0.5 * summary["macs_before"]
    assert 0.0 <= summary["accuracy_after"] <= 1.0
