"""Data-parallel training of the latent-space U-Net over the GPUs of one node, as the Immiscible
Diffusion seed trains SD (accelerate, 8 GPUs x 256 = a global batch of 2048).

Every rank draws the whole global batch's randomness from the same seeded generator (the batch
order, flips, the VAE posterior's noise, prompt dropout, noise and timesteps), encodes only its
own contiguous share of the images, and all-gathers the latents: the noise pairing (linear
assignment, KNN) then runs over the global batch, as the seed gathers it before assigning.
Gradients are summed over ranks (each rank's loss is its share of the global mean), so the
update equals the one-process update over the same global batch up to summation order, and a
run does not depend on the number of GPUs. Rank 0 writes every file.

We sum gradients ourselves (one flat all-reduce per step) instead of wrapping the U-Net in
DistributedDataParallel: the step already accumulates micro-batches, and DDP's averaging and
no_sync bookkeeping would add nothing but a second place where the loss is scaled.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, n: int) -> slice:
        """This rank's contiguous share of a global batch of n (n divisible by size)."""
        if n % self.size:
            raise ValueError(f"a global batch of {n} does not split over {self.size} processes")
        per = n // self.size
        return slice(self.rank * per, (self.rank + 1) * per)

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's share, concatenated in rank order (the global batch's order)."""
        if self.size == 1:
            return tensor
        import torch.distributed as dist

        parts = [torch.empty_like(tensor) for _ in range(self.size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def sum_gradients(self, parameters) -> None:
        if self.size == 1:
            return
        import torch.distributed as dist
        from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

        grads = [p.grad for p in parameters if p.grad is not None]
        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        for g, summed in zip(grads, _unflatten_dense_tensors(flat, grads)):
            g.copy_(summed)

    def sum(self, value: float, device) -> float:
        if self.size == 1:
            return value
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return float(t.item())

    def barrier(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            dist.barrier()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, size: int, port: int, device_type: str, fn, kwargs: dict, results) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, rank=rank, world_size=size)
    try:
        device = torch.device(device_type, rank) if device_type == "cuda" else torch.device("cpu")
        summary = fn(**kwargs, device=device, world=World(rank, size))
        if rank == 0:
            results.put(summary)
    finally:
        dist.destroy_process_group()


def run_data_parallel(fn, kwargs: dict, *, processes: int, device_type: str):
    """fn(**kwargs, device=..., world=...) in `processes` processes (one per GPU, NCCL; gloo on
    the CPU, for tests); returns rank 0's result. A failing rank fails the whole run."""
    if device_type == "cuda" and processes > torch.cuda.device_count():
        raise ValueError(f"data-parallel training over {processes} GPUs, but {torch.cuda.device_count()} are visible")
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    mp.start_processes(_worker, args=(processes, free_port(), device_type, fn, kwargs, results), nprocs=processes,
                       join=True, start_method="spawn")
    return results.get()
