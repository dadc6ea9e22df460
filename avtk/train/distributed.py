"""DDP set-up from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); one process works without it."""
import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from avtk.errors import AvtkError


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized: bool = False  # a process group exists (torchrun), so the model is wrapped in DDP

    @property
    def main(self):
        return self.rank == 0

    def barrier(self):
        if self.initialized:
            dist.barrier()

    def any(self, flag):
        """True on every rank if `flag` is true on any rank."""
        if not self.initialized:
            return bool(flag)
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t)
        return bool(t.item() > 0)

    def sum(self, tensor):
        """The element-wise sum of `tensor` over the ranks (a new tensor on every rank; `tensor` alone without
        a process group). One all-reduce; the caller decides when to bring the result to the host."""
        if not self.initialized:
            return tensor
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    def broadcast(self, value):
        """Rank 0's `value` (any picklable object) on every rank."""
        if not self.initialized:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value):
        """[value of rank 0, value of rank 1, ...] (picklable objects) on every rank."""
        if not self.initialized:
            return [value]
        out = [None] * self.world
        dist.all_gather_object(out, value)
        return out


def setup(device_choice="auto", timeout_minutes=180.0):
    """The process's rank, world size and device; under torchrun, also the process group (NCCL on GPUs, gloo
    on CPUs) whose collectives wait up to `timeout_minutes`. runtime.device cuda without a GPU is an AvtkError."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_choice == "cuda" and not torch.cuda.is_available():
        raise AvtkError("runtime.device = cuda: no CUDA device is available on this machine (use auto or cpu)")
    use_cuda = torch.cuda.is_available() if device_choice == "auto" else device_choice == "cuda"
    if use_cuda and local_rank >= torch.cuda.device_count():
        raise AvtkError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices are visible")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    launched = "TORCHELASTIC_RUN_ID" in os.environ  # torchrun, even with one process: use its backend
    if (world > 1 or launched) and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=timeout_minutes))
        logging.getLogger(__name__).info("rank %d/%d on %s (%s backend)", rank, world, device, dist.get_backend())
    return Dist(rank, world, local_rank, device, dist.is_initialized())


def teardown():
    if dist.is_initialized():
        dist.destroy_process_group()
