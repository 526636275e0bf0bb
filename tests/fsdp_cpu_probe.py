"""Run by tests/test_distributed.py under `torch.distributed.run --nproc_per_node 2`: torch's own FSDP2
(`fully_shard`, one unit per decoder layer plus the root) on CPU processes with gloo. accelerate enables FSDP
on GPUs only, so this checks the planner's FSDP shard sizes with torch directly: a LoRA model of course-tiny is
sharded, trains one step, and each rank prints the bytes it holds (its local shards) as one JSON line.
"""

import json

import torch
import torch.distributed as dist
from peft import LoraConfig, get_peft_model
from torch.distributed.fsdp import fully_shard

from course_utils.loading import load_model


def _bytes(tensors) -> int:
    local = [t.to_local() if hasattr(t, "to_local") else t for t in tensors]  # DTensor -> this rank's shard
    return sum(t.numel() * t.element_size() for t in local)


def main() -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = get_peft_model(
        load_model("course-tiny", dtype="float32", device="cpu"),
        LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    for layer in model.base_model.model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    ids = torch.randint(0, 700, (2, 16)) + rank
    model(input_ids=ids, labels=ids).loss.backward()
    grads = _bytes(p.grad for p in model.parameters() if p.grad is not None)
    opt.step()
    state = _bytes(v for s in opt.state.values() for k, v in s.items() if k != "step")
    print(json.dumps({"rank": rank, "weights": _bytes(model.parameters()), "grads": grads, "opt": state}), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
