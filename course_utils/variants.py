"""LoRA's variants on one budget, and what a combination of adapters keeps: the helpers of notebook 09.

LoRA's variants are switches on ``peft.LoraConfig`` (``use_rslora``, ``use_dora``,
``init_lora_weights="pissa"`` / ``"olora"`` / ``"eva"`` / ``"loftq"``) or on the optimizer (LoRA+,
``peft.optimizers.create_loraplus_optimizer``). To compare them honestly every variant must see the
same batches in the same order for the same number of steps, and the spread over seeds must be
reported. This module holds the pieces that make that protocol short:

- :func:`variant_options`: the ``LoraConfig`` keywords of each variant, by name;
- :func:`seeded_batches` and :func:`train_steps`: one seed protocol (the seed fixes the adapter's
  random init and the order of the batches) and a plain AdamW loop over those batches;
- :func:`lora_scaling`: ``lora_alpha / r`` or, with rsLoRA, ``lora_alpha / sqrt(r)``;
- :func:`delta_weights` and :func:`kept_of_update`: the update ``ΔW`` an adapter adds to each layer,
  and how much of each source update a combined adapter keeps;
- :func:`forward_flops` and :func:`forward_seconds`: the cost of a forward pass, counted and timed;
- :func:`mean_spread`: ``mean ± std`` over seeds, as text.

>>> lora_scaling(16, 8), round(lora_scaling(16, 8, use_rslora=True), 3)
(2.0, 5.657)
>>> variant_options("DoRA")
{'use_dora': True}
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch

from course_utils.hyperparameters import TOY_LORA_LEARNING_RATE, Hyperparameters

__all__ = [
    "VARIANTS",
    "delta_weights",
    "forward_flops",
    "forward_seconds",
    "kept_of_update",
    "loftq_init_",
    "lora_scaling",
    "mean_spread",
    "seeded_batches",
    "short_budget",
    "train_steps",
    "variant_options",
]

#: Each variant's ``LoraConfig`` keywords on top of plain LoRA. LoRA+ changes the optimizer, not the
#: config (:func:`peft.optimizers.create_loraplus_optimizer`); LoftQ needs a 4-bit base and EVA a data
#: pass, so the notebook builds those two itself.
VARIANTS: dict[str, dict[str, Any]] = {
    "LoRA": {},
    "rsLoRA": {"use_rslora": True},
    "DoRA": {"use_dora": True},
    "PiSSA": {"init_lora_weights": "pissa"},
    "OLoRA": {"init_lora_weights": "olora"},
    "LoRA+": {},
}


def variant_options(name: str) -> dict[str, Any]:
    """The ``LoraConfig`` keywords of variant ``name`` (one of :data:`VARIANTS`), as a new dict.

    >>> variant_options("PiSSA")
    {'init_lora_weights': 'pissa'}
    """
    if name not in VARIANTS:
        raise ValueError(f"Unknown LoRA variant {name!r}: the course knows {', '.join(VARIANTS)}.")
    return dict(VARIANTS[name])


def lora_scaling(lora_alpha: float, r: int, *, use_rslora: bool = False) -> float:
    """The factor peft multiplies ``B @ A`` by: ``lora_alpha / r``, or ``lora_alpha / sqrt(r)`` with rsLoRA.

    rsLoRA keeps the update's size steady as the rank grows (plain LoRA's shrinks as ``1/r``).

    >>> lora_scaling(16, 64), lora_scaling(16, 64, use_rslora=True)
    (0.25, 2.0)
    """
    if r < 1:
        raise ValueError(f"LoRA rank r must be a positive integer, got {r!r}.")
    return lora_alpha / math.sqrt(r) if use_rslora else lora_alpha / r


def seeded_batches(dataset: Any, tokenizer: Any, *, steps: int, batch_size: int, seed: int) -> list[dict[str, Any]]:
    """``steps`` padded training batches drawn from ``dataset`` (a ``messages`` task) in an order fixed by ``seed``.

    The seed protocol of notebook 09: the same seed gives the same batches, whatever the variant.
    Rows are tokenized with the loss on the answer only (:func:`course_utils.data.tokenize_for_sft`);
    the epochs are reshuffled with ``seed`` until ``steps`` batches exist.

    >>> from course_utils.data import load_task
    >>> from course_utils.loading import load_tokenizer
    >>> batches = seeded_batches(load_task("shout", "train"), load_tokenizer(), steps=3, batch_size=4, seed=0)
    >>> len(batches), batches[0]["input_ids"].shape[0]
    (3, 4)
    """
    from transformers import DataCollatorForSeq2Seq

    from course_utils.data import tokenize_for_sft

    if steps < 0 or batch_size < 1:
        raise ValueError(f"steps must be >= 0 and batch_size >= 1, got steps={steps!r}, batch_size={batch_size!r}.")
    rows = list(tokenize_for_sft(dataset, tokenizer))
    collate = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    while len(order) < steps * batch_size:
        order += torch.randperm(len(rows), generator=generator).tolist()
    return [dict(collate([rows[i] for i in order[s * batch_size : (s + 1) * batch_size]])) for s in range(steps)]


def short_budget(usual: Hyperparameters) -> Hyperparameters:
    """Notebook 09's budget per run, from a model's usual LoRA values: a third of the steps, half the batch,
    2.5x the learning rate. Small on purpose: 21 runs (7 variants x 3 seeds) fit in a minute on a CPU.

    >>> from course_utils.hyperparameters import suggest
    >>> short = short_budget(suggest("course-tiny", "lora"))
    >>> short.max_steps, short.batch_size, short.learning_rate
    (15, 8, 0.0075)
    """
    rule = {"max_steps": "a third of", "batch_size": "half of", "learning_rate": "2.5x"}
    return replace(
        usual,
        max_steps=max(1, usual.max_steps // 3),
        batch_size=max(1, usual.batch_size // 2),
        learning_rate=2.5 * usual.learning_rate,
        source={
            key: f"notebook 09's short budget: {rule[key]} {usual.source.get(key, 'the usual value')}" for key in rule
        },
    )


def train_steps(
    model: torch.nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    *,
    learning_rate: float = TOY_LORA_LEARNING_RATE,
    optimizer: torch.optim.Optimizer | None = None,
) -> list[float]:
    """One optimizer step per batch (plain PyTorch: forward, backward, step); returns the losses.

    ``optimizer`` defaults to AdamW on the trainable parameters at ``learning_rate``; pass LoRA+'s
    (``create_loraplus_optimizer``) to train with it. The model is left in eval mode.

    >>> from course_utils.data import load_task
    >>> from course_utils.loading import load_model, load_tokenizer
    >>> from peft import LoraConfig, get_peft_model
    >>> tok = load_tokenizer()
    >>> model = get_peft_model(load_model(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    >>> losses = train_steps(model, seeded_batches(load_task("shout", "train"), tok, steps=2, batch_size=4, seed=0))
    >>> len(losses)
    2
    """
    if optimizer is None:
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate)
    device = next(model.parameters()).device
    model.train()
    losses = []
    for batch in batches:
        loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    return losses


def _lora_layers(model: torch.nn.Module, adapter_name: str) -> list[tuple[str, Any]]:
    from peft.tuners.lora import LoraLayer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer) and adapter_name in m.lora_A]


@torch.no_grad()
def delta_weights(model: torch.nn.Module, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """The update ``ΔW = scaling · B @ A`` adapter ``adapter_name`` adds to each layer, in float32, by layer name.

    peft's own ``get_delta_weight`` (so the scaling, rsLoRA included, is the one peft applies). For a
    DoRA adapter this is the low-rank part only; its magnitude vector rescales the rows on top.

    >>> from course_utils.loading import load_model
    >>> from peft import LoraConfig, get_peft_model
    >>> model = get_peft_model(load_model(), LoraConfig(r=4, target_modules=["q_proj"]))
    >>> deltas = delta_weights(model)
    >>> len(deltas), float(next(iter(deltas.values())).abs().max())  # B starts at zero
    (4, 0.0)
    """
    layers = _lora_layers(model, adapter_name)
    if not layers:
        adapters = sorted(
            {a for _, m in _lora_layers(model, "") for a in m.lora_A} | set(getattr(model, "peft_config", {}))
        )
        raise ValueError(f"No LoRA layer holds an adapter named {adapter_name!r}; this model has {adapters}.")
    return {name: m.get_delta_weight(adapter_name).float() for name, m in layers}


def kept_of_update(combined: Mapping[str, torch.Tensor], source: Mapping[str, torch.Tensor]) -> float:
    """How much of ``source``'s update a ``combined`` update keeps: ``<ΔW_c, ΔW_s> / <ΔW_s, ΔW_s>`` over all layers.

    1.0: the combination carries the whole source update along its direction (``cat`` with weight 1);
    0.5: half of it; 0: none (or only directions orthogonal to it).

    >>> a = {"l": torch.tensor([[1.0, 0.0]])}
    >>> kept_of_update({"l": torch.tensor([[0.5, 3.0]])}, a)
    0.5
    """
    missing = sorted(set(source) - set(combined))
    if missing:
        raise ValueError(f"The combined update lacks layers the source adapts: {missing[:3]}.")
    dot = sum(float((combined[k].double() * source[k].double()).sum()) for k in source)
    norm = sum(float((source[k].double() ** 2).sum()) for k in source)
    if norm == 0.0:
        raise ValueError("The source update is zero everywhere (an untrained adapter?): nothing to keep.")
    return dot / norm


@torch.no_grad()
def loftq_init_(
    peft_model: torch.nn.Module, full_precision: torch.nn.Module, adapter_name: str = "default"
) -> list[str]:
    """LoftQ's one-shot initialisation on any device: ``scaling · B @ A`` = the rank-r SVD of ``W - dequant(Q(W))``.

    ``peft_model`` holds a 4-bit base (bitsandbytes ``Linear4bit`` layers with LoRA on top);
    ``full_precision`` is the same model in float32, whose weights ``W`` are the target. After this,
    ``Q(W) + scaling · B @ A`` is the best rank-r correction of the quantization error, so training
    starts from (nearly) the full-precision model instead of the 4-bit one. peft 0.21's own
    ``replace_lora_weights_loftq`` does the same but computes on CUDA only (and leaves out
    ``scaling``, so it matches only with ``lora_alpha == r``). Changes the LoRA weights in place
    (hence the trailing underscore); returns the names of the layers it initialised.

    Raises ValueError when the model has no 4-bit LoRA layer for ``adapter_name``.
    """
    import bitsandbytes as bnb
    from peft.utils.loftq_utils import _low_rank_decomposition

    full = dict(full_precision.named_modules())
    done = []
    for name, module in peft_model.named_modules():
        base = getattr(module, "base_layer", None)
        if not isinstance(base, bnb.nn.Linear4bit) or adapter_name not in getattr(module, "lora_A", {}):
            continue
        key = name.split("base_model.model.", 1)[-1]
        if key not in full:
            raise ValueError(f"The full-precision model has no layer {key!r} matching the 4-bit model's {name!r}.")
        weight = full[key].weight.detach().float()
        dequantized = bnb.functional.dequantize_4bit(base.weight.data, base.weight.quant_state).float()
        scaling = module.scaling[adapter_name]
        parts = _low_rank_decomposition((weight - dequantized) / scaling, reduced_rank=module.r[adapter_name])
        module.lora_A[adapter_name].weight.data = parts["R"].to(module.lora_A[adapter_name].weight.dtype)
        module.lora_B[adapter_name].weight.data = parts["L"].to(module.lora_B[adapter_name].weight.dtype)
        done.append(name)
    if not done:
        raise ValueError(
            f"No 4-bit LoRA layer holds adapter {adapter_name!r}: load the base with "
            "quantization_config=BitsAndBytesConfig(load_in_4bit=True) and wrap it with get_peft_model first."
        )
    return done


def forward_flops(model: torch.nn.Module, inputs: Mapping[str, torch.Tensor]) -> int:
    """Floating-point operations of one forward pass on ``inputs``, counted by ``torch.utils.flop_counter``.

    A count, not a timing: the same on every machine. It counts matrix products (what dominates a
    transformer); DoRA's extra work before merging (the weight norm of ``W + ΔW`` in every forward)
    shows up as the product that rebuilds ``ΔW``.

    >>> from course_utils.loading import load_model
    >>> forward_flops(load_model(), {"input_ids": torch.ones(1, 8, dtype=torch.long)}) > 0
    True
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(**inputs)
    return int(counter.get_total_flops())


def forward_seconds(model: torch.nn.Module, inputs: Mapping[str, torch.Tensor], *, repeats: int = 5) -> float:
    """The fastest of ``repeats`` timed forward passes, in seconds (the minimum is the least disturbed by load).

    >>> from course_utils.loading import load_model
    >>> forward_seconds(load_model(), {"input_ids": torch.ones(1, 8, dtype=torch.long)}, repeats=2) > 0
    True
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats!r}.")
    best = math.inf
    with torch.no_grad():
        model(**inputs)  # warm-up: the first call allocates
        for _ in range(repeats):
            start = time.perf_counter()
            model(**inputs)
            best = min(best, time.perf_counter() - start)
    return best


def mean_spread(values: Sequence[float], scale: float = 1.0, digits: int = 0) -> str:
    """``"mean ± std"`` of ``values`` times ``scale`` (the sample standard deviation; 0 for one value).

    >>> mean_spread([0.5, 0.75, 1.0], scale=100)
    '75 ± 25'
    """
    if not values:
        raise ValueError("mean_spread needs at least one value.")
    xs = [scale * float(v) for v in values]
    spread = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.fmean(xs):.{digits}f} ± {spread:.{digits}f}"
