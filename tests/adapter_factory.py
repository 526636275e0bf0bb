"""Test helpers shared by test_validation.py and test_merging.py: a LoRA adapter with non-trivial weights,
in memory or written to a folder as ``save_pretrained`` writes it."""

from __future__ import annotations

import copy

import torch


def make_adapter(model, dtype=torch.float32, seed=1, r=16):
    """An all-linear LoRA (rank ``r``) with lora_B ~ N(0, 0.02) on a deep copy of ``model`` in ``dtype``.

    ``dtype=None`` keeps the copy's dtype (a bitsandbytes model can't be cast). The non-zero B makes a
    merge actually change the weights, as a trained adapter would.
    """
    from peft import LoraConfig, get_peft_model

    base = copy.deepcopy(model)
    if dtype is not None:
        base = base.to(dtype)
    torch.manual_seed(seed)
    pm = get_peft_model(base, LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear"))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    return pm.eval()


def write_adapter(model, folder, r=4):
    """Write a real adapter for ``model`` (rank ``r``, float32) to ``folder`` with
    course_utils.merging.save_adapter; returns the folder (adapter_config.json + adapter_model.safetensors)."""
    from course_utils.merging import save_adapter

    return save_adapter(make_adapter(model, r=r), folder)
