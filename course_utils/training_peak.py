"""Measure the peak GPU memory of a few training steps of a :class:`~course_utils.recipe.Recipe`.

:func:`measure_training_peak` builds the model a recipe describes (full fine-tuning, LoRA or
QLoRA; gradient checkpointing; LoRA rank and targets), runs a few AdamW steps on random tokens and
reads ``torch.cuda.max_memory_allocated``: the number the memory planner
(``course_utils.planner.estimate_training_memory``) predicts for the same recipe.
:func:`requires_cuda` lets a GPU-only notebook cell skip with one fixed sentence.

>>> requires_cuda("Measuring GPU memory") if not torch.cuda.is_available() else print(
...     "Skipped: Measuring GPU memory needs a CUDA GPU (torch.cuda.is_available() is False here).") or False
Skipped: Measuring GPU memory needs a CUDA GPU (torch.cuda.is_available() is False here).
False
"""

from __future__ import annotations

import gc
import time
from typing import Any

import torch

from course_utils.devices import compute_dtype_for, resolve_device
from course_utils.loading import load_model
from course_utils.quantization import bnb_4bit_config
from course_utils.recipe import Recipe

__all__ = ["MEASURED_METHODS", "measure_training_peak", "requires_cuda"]

#: The methods :func:`measure_training_peak` can build.
MEASURED_METHODS = ("full", "lora", "qlora")


def requires_cuda(what: str) -> bool:
    """``True`` if a CUDA GPU is available; otherwise print ONE sentence saying what is skipped.

    The sentence is the same on every CPU machine, so notebooks stay deterministic under nbval.

    >>> requires_cuda("Measuring GPU memory")   # doctest: +SKIP
    Skipped: Measuring GPU memory needs a CUDA GPU (torch.cuda.is_available() is False here).
    False
    """
    if torch.cuda.is_available():
        return True
    print(f"Skipped: {what} needs a CUDA GPU (torch.cuda.is_available() is False here).")
    return False


def _build_for_recipe(
    name: str, recipe: Recipe, device: torch.device, dtype: torch.dtype
) -> tuple[torch.nn.Module, list[torch.nn.Parameter]]:
    """The model ``recipe`` trains, on ``device``, and its trainable parameters."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    checkpointing = recipe.gradient_checkpointing
    if recipe.method == "qlora":
        model = load_model(name, device=device, dtype=dtype, quantization_config=bnb_4bit_config(device))
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    else:
        model = load_model(name, device=device, dtype=dtype)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if recipe.method != "full":
                model.enable_input_require_grads()
    if recipe.method != "full":
        cfg = LoraConfig(
            r=recipe.r,
            lora_alpha=recipe.lora_alpha,
            lora_dropout=recipe.lora_dropout,
            target_modules=recipe.target_modules,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    return model, params


def _optimizer(recipe: Recipe, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=1e-5)
    if recipe.optimizer == "adamw-8bit":
        from bitsandbytes.optim import AdamW8bit

        return AdamW8bit(params, lr=1e-5)
    return torch.optim.AdamW(params, lr=1e-5)


def _recipe_from_keywords(method: str, device: torch.device, **keywords: Any) -> Recipe:
    """The older call form ``measure_training_peak(name, "lora", batch_size=...)`` as a Recipe.

    Its weights are in the device's compute dtype (``course_utils.devices.compute_dtype_for``), and
    LoRA's alpha is twice its rank, as before.
    """
    r = keywords.get("r", 16)
    return Recipe(
        method=method,
        dtype=str(compute_dtype_for(device)).replace("torch.", ""),
        lora_alpha=2 * r,
        **keywords,
    )


def measure_training_peak(
    name: str,
    recipe: Recipe | str,
    *,
    steps: int = 3,
    device: str | torch.device = "auto",
    **keywords: Any,
) -> dict[str, Any]:
    """Peak CUDA memory (GiB) of ``steps`` training steps of ``recipe`` on random tokens, like the H200 reference.

    ``recipe`` is a :class:`~course_utils.recipe.Recipe` (method ``"full"``, ``"lora"`` or
    ``"qlora"``: a 4-bit NF4 base prepared with ``prepare_model_for_kbit_training``; weights in
    ``recipe.dtype``; with ``recipe.autocast`` on a GPU, matmuls in 16-bit). The older form
    ``measure_training_peak(name, "lora", gradient_checkpointing=True, batch_size=8, ...)`` still
    works: the method as a string plus Recipe fields as keywords, weights in the GPU's 16-bit dtype.
    Needs CUDA for the peak reading (on a CPU the steps run and ``peak_GiB`` is NaN).

    >>> measure_training_peak("course-tiny", Recipe(method="qlora", gradient_checkpointing=True))["peak_GiB"]   # doctest: +SKIP
    0.01
    >>> measure_training_peak("course-tiny", "prefix", device="cpu")
    Traceback (most recent call last):
    ...
    ValueError: measure_training_peak builds 'full', 'lora' or 'qlora' models, got method 'prefix'.
    """
    dev = resolve_device(device)
    method = recipe.method if isinstance(recipe, Recipe) else recipe
    if method not in MEASURED_METHODS:
        raise ValueError(f"measure_training_peak builds 'full', 'lora' or 'qlora' models, got method {method!r}.")
    if isinstance(recipe, str):
        recipe = _recipe_from_keywords(recipe, dev, **keywords)
    elif keywords:
        raise TypeError(f"Pass either a Recipe or the method with keywords, not both (got {sorted(keywords)}).")
    dtype = getattr(torch, recipe.dtype)
    on_cuda = dev.type == "cuda"
    gc.collect()
    if on_cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model, params = _build_for_recipe(name, recipe, dev, dtype)
    model.train()
    opt = _optimizer(recipe, params)
    vocab = model.get_input_embeddings().weight.shape[0]
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab, (recipe.batch_size, recipe.seq_len), generator=gen).to(dev)
    # Mixed precision as the planner models it: matmuls in 16-bit (the weights' dtype, or for float32
    # weights the GPU's 16-bit compute dtype); not on a CPU, where bf16 matmuls crawl.
    compute = dtype if dtype != torch.float32 else compute_dtype_for(dev)
    autocast = on_cuda and recipe.autocast and compute != torch.float32
    t0 = time.perf_counter()
    for _ in range(steps):
        with torch.autocast(dev.type, dtype=compute, enabled=autocast):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if on_cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if on_cuda else float("nan")
    trainable = sum(p.numel() for p in params)
    del model, params, opt, x
    gc.collect()
    if on_cuda:
        torch.cuda.empty_cache()
    return {
        "method": recipe.method,
        "recipe": recipe.name,
        "gradient_checkpointing": recipe.gradient_checkpointing,
        "peak_GiB": peak,
        "step_s": seconds / steps,
        "trainable": trainable,
        "loss": float(loss),
    }
