"""DDP set-up from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); one process works without it."""
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


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


def setup(device_choice="auto"):
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device_choice == "auto" else device_choice.startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    launched = "TORCHELASTIC_RUN_ID" in os.environ  # torchrun, even with one process: use its backend
    if (world > 1 or launched) and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
        logging.getLogger(__name__).info("rank %d/%d on %s (%s backend)", rank, world, device, dist.get_backend())
    return Dist(rank, world, local_rank, device, dist.is_initialized())


def teardown():
    if dist.is_initialized():
        dist.destroy_process_group()
