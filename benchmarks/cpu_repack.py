"""What bitsandbytes' AVX-512-BF16 CPU repack does to QLoRA on course-tiny, with and without the course's fix.

bitsandbytes >= 0.50 repacks a 4-bit weight into a CPU-only layout the first time the layer
runs in eval mode without gradients, on CPUs with AVX-512-BF16 (course_utils/quantization.py).
This script loads course-tiny in 4-bit NF4 (double quantization, float32 compute) three ways:

- ``reference``: never evaluated, so never repacked;
- ``packed``: one evaluation pass (what evaluate_task or generate does), then used as it is;
- ``fixed``: the same evaluation pass, then ``prevent_cpu_repack(model)``.

and prints, against the reference: the relative error of the LoRA gradients of one batch, and
of the dequantized weights (``bitsandbytes.functional.dequantize_4bit``, what merging calls).
With ``--steps N`` (default 100, 0 to skip) it also trains QLoRA (all-linear, r=8, the set-up
of notebook 06) with a plain ``transformers.Trainer`` on the ``shout`` task from the packed and
the fixed model and prints the accuracy before and after. On a CPU without AVX-512-BF16 nothing
is repacked and all rows agree. A few minutes on 2 idle cores (training is most of it; measured
here under heavy contention: 18 minutes per training).

    python benchmarks/cpu_repack.py [--steps 100]
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

from course_utils.quantization import cpu_repack_hazard, prevent_cpu_repack, repacked_layers  # noqa: E402


def _load_raw(path: str):
    """course-tiny in 4-bit the way a learner's own code loads it (no course_utils in the path)."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    return AutoModelForCausalLM.from_pretrained(
        path, quantization_config=config, dtype=torch.float32, device_map={"": "cpu"}
    )


def _with_lora(model):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    torch.manual_seed(0)
    return get_peft_model(
        model,
        LoraConfig(
            r=8,
            lora_alpha=16,
            lora_dropout=0.0,
            target_modules="all-linear",
            init_lora_weights=False,
            task_type="CAUSAL_LM",
        ),
    )


def _lora_grads(model, batch) -> torch.Tensor:
    model.train()
    model.zero_grad(set_to_none=True)
    model(**batch).loss.backward()
    return torch.cat([p.grad.flatten() for n, p in model.named_parameters() if p.requires_grad])


def _dequantized(model) -> torch.Tensor:
    import bitsandbytes.functional as F

    out = [
        F.dequantize_4bit(m.weight.data, m.weight.quant_state).float().flatten()
        for _, m in sorted(model.named_modules(), key=lambda x: x[0])
        if type(m._parameters.get("weight")).__name__ == "Params4bit"
    ]
    return torch.cat(out)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _train(model, tokenizer, steps: int) -> tuple[float, float]:
    """Accuracy before and after QLoRA with a plain Trainer (no course_utils.training in the path)."""
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer

    from course_utils.data import load_task, tokenize_for_sft
    from course_utils.evaluation import evaluate_task
    from course_utils.training import cpu_friendly_args

    eval_ds = load_task("shout", "eval")
    before = evaluate_task(model, tokenizer, eval_ds, progress=False).accuracy  # the evaluation pass
    peft_model = get_peft_model(
        model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    trainer = Trainer(
        model=peft_model,
        args=cpu_friendly_args(max_steps=steps, logging_steps=steps),
        train_dataset=tokenize_for_sft(load_task("shout", "train"), tokenizer),
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
    )
    trainer.train()
    peft_model.eval()
    return before, evaluate_task(peft_model, tokenizer, eval_ds, progress=False).accuracy


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="QLoRA training steps (0: skip training)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from course_utils.loading import load_tokenizer, resolve_model_path

    path = resolve_model_path("course-tiny")
    tokenizer = load_tokenizer("course-tiny")
    text = (
        "<|im_start|>user\nWhere does the owl live?<|im_end|>\n<|im_start|>assistant\n"
        "THE OWL LIVES IN THE FOREST.<|im_end|>"
    )
    batch = tokenizer([text], return_tensors="pt")
    batch["labels"] = batch["input_ids"].clone()

    hazard = cpu_repack_hazard()
    print(f"CPU with AVX-512-BF16 (bitsandbytes repacks here): {hazard}")
    reference = _with_lora(_load_raw(path))
    packed = copy.deepcopy(reference)
    packed.eval()
    with torch.no_grad():
        packed(**batch)  # one evaluation pass
    n = len(repacked_layers(packed))
    fixed = copy.deepcopy(packed)
    undone = prevent_cpu_repack(fixed)
    print(f"4-bit layers repacked by one evaluation pass: {n}; converted back by prevent_cpu_repack: {undone}")

    g_ref, w_ref = _lora_grads(reference, batch), _dequantized(reference)
    print(f"{'model':<8} {'LoRA gradient rel. error':>25} {'dequantized weight rel. error':>30}")
    for name, model in (("packed", packed), ("fixed", fixed)):
        print(f"{name:<8} {_rel(_lora_grads(model, batch), g_ref):>25.3g} {_rel(_dequantized(model), w_ref):>30.3g}")

    if args.steps > 0:
        torch.manual_seed(0)
        print(f"QLoRA on 'shout', {args.steps} steps, plain Trainer, after one evaluation pass:")
        for name, fix in (("packed", False), ("fixed", True)):
            model = _load_raw(path)
            if fix:
                prevent_cpu_repack(model)
            else:
                for m in model.modules():  # what bitsandbytes does on an AVX-512-BF16 CPU, kept
                    if hasattr(m, "support_avx512bf16_for_cpu"):
                        m.support_avx512bf16_for_cpu = hazard
            before, after = _train(model, tokenizer, args.steps)
            print(f"  {name:<8} accuracy {before:.1%} -> {after:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
