"""Train a LoRA adapter on a chat task with the plain ``transformers.Trainer``.

The notebooks show every step of this once (notebook 1); later notebooks that only need a
trained adapter call :func:`train_adapter` (older name ``train_lora``) so they stay short and
self-contained.

>>> from peft import LoraConfig
>>> from course_utils.loading import load_model, load_tokenizer
>>> from course_utils.data import load_task
>>> run = train_adapter(load_model(), load_tokenizer(), load_task("shout", "train"),
...                  LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]), max_steps=5)
>>> run.model.peft_config["default"].r
8
"""

from __future__ import annotations

import atexit
import contextlib
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from datasets import Dataset

from course_utils.data import require_messages, tokenize_for_sft
from course_utils.devices import (  # the first re-exported: notebooks import it here
    mixed_precision_flags,
    trainer_device_flags,
)
from course_utils.hyperparameters import TOY_LORA_LEARNING_RATE, TOY_LORA_STEPS
from course_utils.quantization import prevent_cpu_repack

__all__ = [
    "TimeBudget",
    "TrainRun",
    "cpu_friendly_args",
    "mixed_precision_flags",
    "time_budget",
    "train_adapter",
    "train_lora",
]


@dataclass
class TrainRun:
    """What :func:`train_adapter` returns: the trained ``PeftModel``, its trainer and the wall time."""

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


def time_budget(seconds: float) -> Any:
    """A ``TrainerCallback`` that ends training after ``seconds`` of wall time.

    A budget, not a measurement: a slow machine trains fewer steps instead of running long.

    >>> time_budget(60).stopped_early
    False
    """
    return _time_budget_callback(seconds)


#: The older name of :func:`time_budget` (it returns a callback object, but is a function).
TimeBudget = time_budget


def _scratch_output_dir() -> str:
    """A new folder for a Trainer that saves nothing; removed at exit if it is still empty.

    The Trainer needs an ``output_dir``; transformers' default (``trainer_output/``) would land beside the
    notebook, and one shared folder would let one run's ``save_model()`` overwrite another's. A fresh temporary
    folder per call avoids both, and ``os.rmdir`` at exit removes only an empty one, never what was saved there.

    >>> path = _scratch_output_dir()
    >>> os.path.isdir(path) and os.path.basename(path).startswith("course-run-")
    True
    """
    path = tempfile.mkdtemp(prefix="course-run-")
    atexit.register(_remove_if_empty, path)
    return path


def _remove_if_empty(path: str) -> None:
    with contextlib.suppress(OSError):  # rmdir fails on a folder that holds anything
        os.rmdir(path)


def cpu_friendly_args(output_dir: str | None = None, **overrides: Any):
    """``TrainingArguments`` that work the same on a CPU, Colab and a local GPU.

    - ``use_cpu`` only when there is no accelerator; fp32 on CPU (bf16 matmuls crawl on
      CPUs without AVX-512-BF16/AMX); on a CUDA GPU bf16 from compute capability 8.0 on and
      fp16 below it (a T4, a V100), like ``dtype="auto"``; ``dataloader_pin_memory=False`` (its warning
      on CPU breaks nbval): :func:`course_utils.devices.trainer_device_flags`;
    - no checkpoints,
      no reporting, a fixed seed.

    >>> cpu_friendly_args(max_steps=3).max_steps
    3
    >>> cpu_friendly_args(max_steps=2, logging_steps=10).logging_steps  # never longer than the run
    2
    """
    from transformers import TrainingArguments

    defaults: dict[str, Any] = dict(
        output_dir=output_dir or _scratch_output_dir(),
        per_device_train_batch_size=16,
        learning_rate=TOY_LORA_LEARNING_RATE,
        lr_scheduler_type="constant",
        warmup_steps=0,
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        seed=0,
        data_seed=0,
        **trainer_device_flags("auto"),
        disable_tqdm=True,
        remove_unused_columns=False,
    )
    defaults.update(overrides)
    # A run shorter than the logging interval would log no loss at all (`course-utils run --max-steps 2`):
    # log at least once, at the last step.
    if defaults.get("max_steps", -1) > 0 and defaults["logging_steps"] > defaults["max_steps"]:
        defaults["logging_steps"] = defaults["max_steps"]
    return TrainingArguments(**defaults)


def train_adapter(
    model: Any,
    tokenizer: Any,
    train_dataset: Dataset,
    peft_config: Any,
    *,
    max_steps: int = TOY_LORA_STEPS,
    learning_rate: float = TOY_LORA_LEARNING_RATE,
    batch_size: int = 16,
    logging_steps: int = 10,
    callbacks: Sequence[Any] = (),
    adapter_name: str = "default",
    **training_args: Any,
) -> TrainRun:
    """Wrap ``model`` with ``peft_config`` (``get_peft_model``) and train it on a ``messages`` dataset.

    Any peft config works: ``LoraConfig``, ``IA3Config``, ``PromptTuningConfig``, ... The loss is
    computed on the assistant's answer only (:func:`course_utils.data.tokenize_for_sft`). A 4-bit
    base that bitsandbytes repacked for the CPU during an earlier evaluation is converted back
    first (:func:`course_utils.quantization.prevent_cpu_repack`): its gradients would be wrong.
    ``train_lora`` is the older name of this function.

    Returns:
        :class:`TrainRun` with ``.model`` (the ``PeftModel``), ``.trainer`` and ``.seconds``.
    """
    from peft import PeftModel, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer
    from transformers.trainer_callback import PrinterCallback

    # before the model is wrapped: a wrong dataset must not leave a half-built PeftModel behind
    train_dataset = require_messages(train_dataset, "train_lora")
    prevent_cpu_repack(model)
    if isinstance(model, PeftModel):
        model.add_adapter(adapter_name, peft_config)
        model.set_adapter(adapter_name)  # makes the new adapter the active, trainable one
        peft_model = model
    else:
        peft_model = get_peft_model(model, peft_config, adapter_name=adapter_name)
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


#: The older name of :func:`train_adapter` (it trains any peft config, not only LoRA).
train_lora = train_adapter
