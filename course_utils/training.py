"""Train a LoRA adapter on a chat task with the plain ``transformers.Trainer``.

The notebooks show every step of this once (notebook 1); later notebooks that only need a
trained adapter call :func:`train_lora` so they stay short and self-contained.

>>> from peft import LoraConfig
>>> from course_utils.loading import load_model, load_tokenizer
>>> from course_utils.data import load_task
>>> run = train_lora(load_model(), load_tokenizer(), load_task("shout", "train"),
...                  LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]), max_steps=5)
>>> run.model.peft_config["default"].r
8
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from datasets import Dataset

from course_utils.data import require_messages, tokenize_for_sft

__all__ = ["TimeBudget", "TrainRun", "cpu_friendly_args", "mixed_precision_flags", "train_lora"]


@dataclass
class TrainRun:
    """What :func:`train_lora` returns: the trained ``PeftModel``, its trainer and the wall time."""

    model: Any
    trainer: Any
    seconds: float

    @property
    def losses(self) -> list[float]:
        return [row["loss"] for row in self.trainer.state.log_history if "loss" in row]


def _time_budget_callback(seconds: float) -> Any:
    from transformers import TrainerCallback

    class TimeBudget(TrainerCallback):
        """Stop training once ``seconds`` of wall time have passed (checked after each step)."""

        def __init__(self) -> None:
            self.start = 0.0
            self.stopped_early = False

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.start = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if time.perf_counter() - self.start > seconds:
                control.should_training_stop = True
                self.stopped_early = True

    return TimeBudget()


def TimeBudget(seconds: float) -> Any:  # noqa: N802 - reads like a class at the call site
    """A ``TrainerCallback`` that ends training after ``seconds`` of wall time.

    A budget, not a measurement: a slow machine trains fewer steps instead of running long.

    >>> TimeBudget(60).stopped_early
    False
    """
    return _time_budget_callback(seconds)


def mixed_precision_flags(device: Any = "auto") -> dict[str, bool]:
    """The Trainer's ``bf16``/``fp16`` flags that match ``load_model(..., dtype="auto")`` on ``device``.

    ``bf16=True`` on a CUDA GPU with native bf16 (compute capability >= 8.0), ``fp16=True`` on an
    older CUDA GPU (T4, V100), both False on a CPU and on MPS (the model trains in its own dtype).
    Follows :func:`course_utils.loading.resolve_dtype`, so a model and its Trainer never disagree.

    >>> mixed_precision_flags("cpu")
    {'bf16': False, 'fp16': False}
    """
    import torch

    from course_utils.loading import resolve_device, resolve_dtype

    dev = resolve_device(device)
    dtype = resolve_dtype("auto", dev)
    on_cuda = dev.type == "cuda"
    return {"bf16": on_cuda and dtype == torch.bfloat16, "fp16": on_cuda and dtype == torch.float16}


def cpu_friendly_args(output_dir: str | None = None, **overrides: Any):
    """``TrainingArguments`` that work the same on a CPU, Colab and a local GPU.

    - ``use_cpu`` only when there is no accelerator; fp32 on CPU (bf16 matmuls crawl on
      CPUs without AVX-512-BF16/AMX); on a CUDA GPU bf16 from compute capability 8.0 on and
      fp16 below it (a T4, a V100), like ``dtype="auto"`` (:func:`mixed_precision_flags`);
    - ``dataloader_pin_memory=False`` (its warning on CPU breaks nbval), no checkpoints,
      no reporting, a fixed seed.

    >>> cpu_friendly_args(max_steps=3).max_steps
    3
    >>> cpu_friendly_args(max_steps=2, logging_steps=10).logging_steps  # never longer than the run
    2
    """
    import torch
    from transformers import TrainingArguments

    on_gpu = torch.cuda.is_available()
    defaults: dict[str, Any] = dict(
        output_dir=output_dir or tempfile.mkdtemp(prefix="course-run-"),
        per_device_train_batch_size=16,
        learning_rate=2e-3,
        lr_scheduler_type="constant",
        warmup_steps=0,
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        seed=0,
        data_seed=0,
        use_cpu=not on_gpu and not torch.backends.mps.is_available(),
        **mixed_precision_flags("cuda" if on_gpu else "cpu"),
        dataloader_pin_memory=False,
        disable_tqdm=True,
        remove_unused_columns=False,
    )
    defaults.update(overrides)
    # A run shorter than the logging interval would log no loss at all (`course-utils run --max-steps 2`):
    # log at least once, at the last step.
    if defaults.get("max_steps", -1) > 0 and defaults["logging_steps"] > defaults["max_steps"]:
        defaults["logging_steps"] = defaults["max_steps"]
    return TrainingArguments(**defaults)


def train_lora(
    model: Any,
    tokenizer: Any,
    train_dataset: Dataset,
    lora_config: Any,
    *,
    max_steps: int = 150,
    learning_rate: float = 2e-3,
    batch_size: int = 16,
    logging_steps: int = 10,
    callbacks: Sequence[Any] = (),
    adapter_name: str = "default",
    **training_args: Any,
) -> TrainRun:
    """Wrap ``model`` with ``lora_config`` (``get_peft_model``) and train it on a ``messages`` dataset.

    The loss is computed on the assistant's answer only (:func:`course_utils.data.tokenize_for_sft`).
    A 4-bit base that bitsandbytes repacked for the CPU during an earlier evaluation is converted
    back first (:func:`course_utils.quantization.prevent_cpu_repack`): its gradients would be wrong.

    Returns:
        :class:`TrainRun` with ``.model`` (the ``PeftModel``), ``.trainer`` and ``.seconds``.
    """
    from peft import PeftModel, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer
    from transformers.trainer_callback import PrinterCallback

    from course_utils.quantization import prevent_cpu_repack

    # before the model is wrapped: a wrong dataset must not leave a half-built PeftModel behind
    train_dataset = require_messages(train_dataset, "train_lora")
    prevent_cpu_repack(model)
    if isinstance(model, PeftModel):
        model.add_adapter(adapter_name, lora_config)
        model.set_adapter(adapter_name)  # makes the new adapter the active, trainable one
        peft_model = model
    else:
        peft_model = get_peft_model(model, lora_config, adapter_name=adapter_name)
    args = cpu_friendly_args(
        max_steps=max_steps,
        learning_rate=learning_rate,
        per_device_train_batch_size=batch_size,
        logging_steps=min(logging_steps, max_steps),  # a loss is logged even for few steps
        **training_args,
    )
    trainer = Trainer(
        model=peft_model,
        args=args,
        train_dataset=tokenize_for_sft(train_dataset, tokenizer),
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
        processing_class=tokenizer,
        callbacks=list(callbacks),
    )
    trainer.remove_callback(PrinterCallback)  # losses go to log_history (plotted), not to stdout
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    peft_model.eval()
    return TrainRun(model=peft_model, trainer=trainer, seconds=seconds)
