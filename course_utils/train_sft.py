"""Train a LoRA adapter with TRL's SFTTrainer: one process, or N with `accelerate launch` (notebook 07).

python train_sft.py --max-steps 40
accelerate launch --config_file ddp.yaml --num_processes 2 train_sft.py --output-dir outputs/07-ddp
"""

import argparse
import os

import torch
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

from course_utils.data import load_task, to_prompt_completion
from course_utils.hyperparameters import TOY_LORA_LEARNING_RATE
from course_utils.loading import resolve_model_path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="course-tiny", help="course-tiny, smollm2-135m, a hub id or a folder")
    p.add_argument("--task", default="shout")
    p.add_argument("--max-steps", type=int, default=40, help="optimizer steps; each process takes its own batch")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per process per step")
    p.add_argument("--learning-rate", type=float, default=TOY_LORA_LEARNING_RATE)
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", default="outputs/07-shout-ddp")
    args = p.parse_args()

    gpu = torch.cuda.is_available()
    bf16 = gpu and torch.cuda.get_device_capability()[0] >= 8  # A100/H100/RTX 30xx+; a T4 emulates bf16 slowly
    path = resolve_model_path(args.model)  # the course's short names; a hub id passes through
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16 if bf16 else torch.float32)

    config = SFTConfig(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,  # per process: N processes train on N x this per step
        learning_rate=args.learning_rate,
        lr_scheduler_type="constant",
        bf16=bf16,
        use_cpu=not gpu,  # CPU processes talk over gloo
        activation_checkpointing=False,  # TRL turns it on by default; a small model does not need the memory
        ddp_find_unused_parameters=False,  # every LoRA weight gets a gradient each step: skip DDP's search
        logging_steps=max(1, args.max_steps // 5),
        save_strategy="no",  # no checkpoints; the adapter is saved once, below
        report_to="none",
        seed=args.seed,
    )
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=to_prompt_completion(load_task(args.task, "train")),  # prompt -> completion pairs
        processing_class=tokenizer,
        peft_config=LoraConfig(r=args.r, lora_alpha=2 * args.r, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    if os.environ.get("COURSE_RANK_FACTS"):  # only when notebook 07 checks what each process saw and held
        from course_utils.distributed import record_rank_facts

        record_rank_facts(trainer, os.environ["COURSE_RANK_FACTS"])
    trainer.train()  # accelerate wraps the model in DDP (or FSDP) and gives each process its share of the data
    if trainer.is_fsdp_enabled:  # FSDP: gather the adapter's shards into one file
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(args.output_dir)  # the adapter only, written once by the main process


if __name__ == "__main__":
    main()
