"""LoRA's variants on one budget, and two task adapters combined five ways: the tables of notebook 09.

The notebook's protocol (notebooks/09_lora_variants.py) on the default model, course-tiny: every
variant (LoRA, rsLoRA, DoRA, PiSSA, OLoRA, EVA, LoRA+, and with bitsandbytes QLoRA and LoftQ on a
4-bit base) trains r=8 on q_proj/v_proj for the same batches in the same order (``seeded_batches``),
one run per seed, and is scored by exact match on the whole eval split and by its held-out loss (the
loss on the answers of every eval conversation, teacher-forced) over the base model's. Printed:

1. the variant table: accuracy mean ± std over seeds and the worst seed, held-out loss / base's,
   trainable parameters,
   training seconds (mean over seeds), the peak memory a run added (CPU resident memory), and one
   decoding step's FLOPs and fastest time, unmerged and merged (seed 0's model);
2. the combination table: a TASK adapter and an OTHER adapter (plain LoRA, seed 0) combined with
   ``add_weighted_adapter`` (cat, svd, ties, dare_ties, magnitude_prune; weights 1, 1; density 0.5),
   accuracy on both tasks and what each keeps of each source update.

The defaults are the notebook's budget (``suggest``'s LoRA values for the model: a third of its steps,
half its batch, 2.5x its learning rate; on course-tiny 15 steps x 8 at 7.5e-3). Exits 1 if, in some
seed, a variant's held-out loss is above 2/3 of the base's (the notebook's claim), or cat's update is
not the sum. About 1.5 minutes on 2 idle cores with the defaults (27 runs); timings under load are
inflated 2-4x. A larger budget shows whether a ranking appears near the ceiling:

    python benchmarks/lora_variants.py
    python benchmarks/lora_variants.py --steps 50 --lr 5e-3
    python benchmarks/lora_variants.py --seeds 0 1 2 3 4 --steps 100
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd
import torch
from peft import EvaConfig, LoraConfig, get_peft_model, initialize_lora_eva_weights
from peft.optimizers import create_loraplus_optimizer

from course_utils.data import load_task
from course_utils.evaluation import evaluate_task
from course_utils.hyperparameters import suggest
from course_utils.loading import load_model, load_tokenizer
from course_utils.memory import MemoryTracker
from course_utils.notebook import quiet
from course_utils.platform_support import bitsandbytes_available
from course_utils.variants import (
    delta_weights,
    forward_flops,
    forward_seconds,
    kept_of_update,
    loftq_init_,
    mean_spread,
    seeded_batches,
    short_budget,
    train_steps,
    variant_options,
)

VARIANTS = ["LoRA", "rsLoRA", "DoRA", "PiSSA", "OLoRA", "EVA", "LoRA+"]
COMBINATIONS = {
    "cat": {},
    "svd": {},
    "ties": {"density": 0.5},
    "dare_ties": {"density": 0.5},
    "magnitude_prune": {"density": 0.5},
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    short = short_budget(suggest("course-tiny", "lora"))  # the notebook's "auto" budget, from the same source
    parser.add_argument("--steps", type=int, default=short.max_steps)
    parser.add_argument("--batch-size", type=int, default=short.batch_size)
    parser.add_argument("--lr", type=float, default=short.learning_rate)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16)
    parser.add_argument("--loraplus-ratio", type=float, default=4)
    parser.add_argument("--task", default="shout")
    parser.add_argument("--other-task", default="terse")
    args = parser.parse_args()
    quiet()
    torch.set_num_threads(1)

    tok, base = load_tokenizer(), load_model()
    train_ds, eval_ds = load_task(args.task, "train"), load_task(args.task, "eval")
    batches = {
        s: seeded_batches(train_ds, tok, steps=args.steps, batch_size=args.batch_size, seed=s) for s in args.seeds
    }
    step = {"input_ids": batches[args.seeds[0]][0]["input_ids"][:1, -1:]}
    acc_base = evaluate_task(base, tok, eval_ds, progress=False).accuracy
    eval_batch = seeded_batches(eval_ds, tok, steps=1, batch_size=len(eval_ds), seed=0)[0]

    def held_out_loss(model):
        with torch.no_grad():
            return model(**eval_batch).loss.item()

    loss_base = held_out_loss(base)

    def config(**options):
        return LoraConfig(
            r=args.rank, lora_alpha=args.alpha, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], **options
        )

    def make(name, seed):
        torch.manual_seed(seed)
        if name in ("QLoRA", "LoftQ"):
            from course_utils.quantization import bnb_4bit_config, prevent_cpu_repack

            quantized = load_model(quantization_config=bnb_4bit_config("cpu"), device="cpu")
            prevent_cpu_repack(quantized)
            torch.manual_seed(seed)
            model = get_peft_model(quantized, config())
            if name == "LoftQ":
                loftq_init_(model, base)
            return model, None
        options = {"init_lora_weights": "eva", "eva_config": EvaConfig()} if name == "EVA" else variant_options(name)
        model = get_peft_model(copy.deepcopy(base), config(**options), low_cpu_mem_usage=name == "EVA")
        if name == "EVA":
            inputs = [{k: v for k, v in b.items() if k != "labels"} for b in batches[seed][:4]]
            initialize_lora_eva_weights(model, dataloader=inputs, show_progress_bar=False)
        optimizer = None
        if name == "LoRA+":
            optimizer = create_loraplus_optimizer(
                model, optimizer_cls=torch.optim.AdamW, lr=args.lr, loraplus_lr_ratio=args.loraplus_ratio
            )
        return model, optimizer

    names = VARIANTS + (["QLoRA", "LoftQ"] if bitsandbytes_available()[0] else [])
    tracker = MemoryTracker("cpu")
    rows, first = {}, {}
    for name in names:
        accs, ratios, seconds, peaks = [], [], [], []
        for seed in args.seeds:
            model, optimizer = make(name, seed)
            with tracker.phase(f"{name} {seed}") as record:
                train_steps(model, batches[seed], learning_rate=args.lr, optimizer=optimizer)
            accs.append(evaluate_task(model, tok, eval_ds, progress=False).accuracy)
            ratios.append(held_out_loss(model) / loss_base)
            seconds.append(record.seconds)
            peaks.append((record.peak_bytes - record.start_bytes) / 2**20)
            if seed == args.seeds[0]:
                first[name] = model
        model = first[name]
        row = {
            "accuracy % (mean ± std)": mean_spread(accs, scale=100),
            "min %": 100 * min(accs),
            "held-out loss / base's": mean_spread(ratios, digits=2),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "train s": sum(seconds) / len(seconds),
            "peak +MiB": max(peaks),
        }
        if name not in ("QLoRA", "LoftQ"):  # merging into a 4-bit base is notebook 06's subject
            merged = copy.deepcopy(model).merge_and_unload()
            row |= {
                "step MFLOP unmerged": forward_flops(model, step) / 1e6,
                "step MFLOP merged": forward_flops(merged, step) / 1e6,
                "step ms unmerged": 1e3 * forward_seconds(model, step, repeats=20),
                "step ms merged": 1e3 * forward_seconds(merged, step, repeats=20),
            }
        rows[name] = row
        rows[name]["_worst_ratio"] = max(ratios)
        print(f"  {name}: {row['accuracy % (mean ± std)']}", file=sys.stderr, flush=True)
    tracker.close()
    table = pd.DataFrame(rows).T
    failed = [n for n in names if table.loc[n, "_worst_ratio"] > 2 / 3]
    table = table.drop(columns="_worst_ratio")

    # the combination table
    other_train, other_eval = load_task(args.other_task, "train"), load_task(args.other_task, "eval")
    combo = get_peft_model(copy.deepcopy(base), config(), adapter_name=args.task)
    combo.load_state_dict(
        {k.replace(".default.", f".{args.task}."): v for k, v in first["LoRA"].state_dict().items() if "lora_" in k},
        strict=False,
    )
    combo.add_adapter(args.other_task, config())
    combo.set_adapter(args.other_task)
    train_steps(
        combo,
        seeded_batches(other_train, tok, steps=args.steps, batch_size=args.batch_size, seed=args.seeds[0]),
        learning_rate=args.lr,
    )
    deltas = {t: delta_weights(combo, t) for t in (args.task, args.other_task)}
    combo_rows = {}
    for name in (args.task, args.other_task):
        combo.set_adapter(name, inference_mode=True)
        combo_rows[f"{name} alone"] = {
            f"{args.task} %": 100 * evaluate_task(combo, tok, eval_ds, progress=False).accuracy,
            f"{args.other_task} %": 100 * evaluate_task(combo, tok, other_eval, progress=False).accuracy,
        }
    cat_error = None
    for kind, options in COMBINATIONS.items():
        torch.manual_seed(0)
        combo.add_weighted_adapter([args.task, args.other_task], [1.0, 1.0], kind, combination_type=kind, **options)
        combo.set_adapter(kind, inference_mode=True)
        combined = delta_weights(combo, kind)
        if kind == "cat":
            total = {k: deltas[args.task][k] + deltas[args.other_task][k] for k in combined}
            cat_error = max((combined[k] - total[k]).abs().max().item() for k in combined)
        combo_rows[kind] = {
            f"{args.task} %": 100 * evaluate_task(combo, tok, eval_ds, progress=False).accuracy,
            f"{args.other_task} %": 100 * evaluate_task(combo, tok, other_eval, progress=False).accuracy,
            f"kept of {args.task}": kept_of_update(combined, deltas[args.task]),
            f"kept of {args.other_task}": kept_of_update(combined, deltas[args.other_task]),
            "rank": combo.peft_config[kind].r,
        }
    combos = pd.DataFrame(combo_rows).T

    pd.options.display.float_format = "{:.3g}".format
    pd.options.display.width = 200
    print(
        f"Variants: {args.task}, r={args.rank} alpha={args.alpha:g} on q_proj/v_proj, {args.steps} steps x batch "
        f"{args.batch_size}, lr {args.lr:g}, seeds {args.seeds}, {len(eval_ds)} eval questions; base accuracy "
        f"{100 * acc_base:.0f}%. Timings and memory: this machine, now (under load they are inflated)."
    )
    print(table.to_string())
    print(f"\nCombinations of the {args.task} and {args.other_task} LoRA adapters (weights 1, 1; density 0.5):")
    print(combos.to_string())
    print(f"\ncat: max |ΔW_cat - (ΔW_{args.task} + ΔW_{args.other_task})| = {cat_error:.1e}")
    if failed:
        print(f"FAILED: held-out loss above 2/3 of the base's in some seed for {failed}")
    if cat_error is None or cat_error > 1e-6:
        print("FAILED: cat's update is not the sum of the updates")
    return 1 if failed or cat_error is None or cat_error > 1e-6 else 0


if __name__ == "__main__":
    raise SystemExit(main())
