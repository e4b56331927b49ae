"""Data-parallel training of a compiled model with torch's own DistributedDataParallel.

    torchrun --standalone --nproc_per_node=2 examples/train_torch_ddp.py --spec resnet20 --steps 30

gloo on CPU, nccl where every process has a GPU: the code is the same. rescompile only builds the
model (``rescompile.create_model``); the process group, the sampler, DDP and the optimiser are
torch's. The data is a fixed synthetic set (no download), which the network learns to fit, so the
loss falls. At the end every process checks that all replicas hold identical weights, and rank 0
that the loss fell; the exit status says whether both held.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import rescompile


def synthetic_data(samples: int, size: int, classes: int) -> TensorDataset:
    """The same images and labels on every process (seeded): labels a fixed function of the images."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(samples, 3, size, size, generator=generator)
    labels = images.mean(dim=(1, 2, 3)).argsort().argsort() * classes // samples  # balanced classes
    return TensorDataset(images, labels)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="resnet20", help="a built-in name or a spec file (default: resnet20)")
    parser.add_argument("--steps", type=int, default=30, help="optimiser steps (default: 30)")
    parser.add_argument("--batch", type=int, default=16, help="images per process per step (default: 16)")
    parser.add_argument("--size", type=int, default=32, help="input height and width (default: 32)")
    options = parser.parse_args()

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else "cpu")
    torch.manual_seed(0)  # the same initial weights everywhere (DDP also broadcasts rank 0's)

    model = rescompile.create_model(options.spec, num_classes=10, input_size=options.size).to(device)
    model = DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    dataset = synthetic_data(options.batch * world * 4, options.size, classes=10)
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(dataset, batch_size=options.batch, sampler=sampler, drop_last=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)

    losses: list[float] = []
    step, epoch = 0, 0
    model.train()
    while step < options.steps:
        sampler.set_epoch(epoch)
        for images, labels in loader:
            loss = torch.nn.functional.cross_entropy(model(images.to(device)), labels.to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            average = loss.detach().clone()
            dist.all_reduce(average)
            losses.append(average.item() / world)
            step += 1
            if rank == 0 and (step % 10 == 0 or step == options.steps):
                print(f"step {step:4d}  loss {losses[-1]:.4f}", flush=True)
            if step == options.steps:
                break
        epoch += 1

    # Replicas: every process's weights equal rank 0's. BatchNorm's running statistics are each
    # process's own (as in torch's DDP without SyncBatchNorm), so parameters are compared.
    parameters = torch.cat([value.detach().double().flatten() for value in model.module.parameters()])
    gathered = [torch.empty_like(parameters) for _ in range(world)]
    dist.all_gather(gathered, parameters)
    identical = all(torch.equal(gathered[0], other) for other in gathered[1:])
    fell = sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    if rank == 0:
        print(f"replicas identical: {identical}; loss {losses[0]:.4f} -> {losses[-1]:.4f} (fell: {fell})")
    # Every process past its last collective before any tears the group down: a gloo process
    # destroying it while a peer still uses it aborts ("terminate called without an active exception").
    dist.barrier()
    del model
    dist.destroy_process_group()
    return 0 if identical and fell else 1


if __name__ == "__main__":
    status = main()
    sys.stdout.flush()
    # NOTE: leave without running interpreter teardown: gloo's threads sometimes abort it on CPU
    # ("terminate called without an active exception") after the group was destroyed cleanly.
    os._exit(status)
