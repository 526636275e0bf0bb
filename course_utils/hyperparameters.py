"""Learning rate, steps and batch size that suit the model's size and the PEFT method.

The course's default model, ``course-tiny`` (about 1.8M parameters), learns a task in tens of
steps at learning rates that would wreck a real model (LoRA at 3e-3, DPO at 1e-3). On a real
instruct model (SmolLM2-135M/360M/1.7B-Instruct, or any other) the same lesson needs the values a
practitioner would use. :func:`suggest` picks them from the parameter count, and every value
carries its source:

- **LoRA**: 2e-4, the rate of TRL's own LoRA example (``trl/scripts/sft.py --use_peft``: 2e-4,
  ten times its full fine-tuning 2e-5) and of the QLoRA paper (Dettmers et al. 2023, appendix:
  2e-4 for 7B and 13B models, 1e-4 for 33B and 65B), so 1e-4 from 15B parameters on.
- **QLoRA**: as LoRA (the QLoRA paper's rates); the 4-bit base does not change the adapter's.
- **DPO** (on a LoRA adapter, as in notebook 04): 5e-6, TRL's DPO example with ``--use_peft``
  (``trl/scripts/dpo.py``, Qwen2-0.5B-Instruct); from 15B parameters on ``DPOConfig``'s default
  1e-6 (``trl/trainer/dpo_config.py``). Full-model DPO uses less still (5e-7 in the same script).
- **Prompt tuning**: 3e-2, peft's prompt-tuning guide for causal LMs (bloomz-560m, AdamW). Lester
  et al. 2021 trained T5 soft prompts at 0.3 with Adafactor; the toy uses 0.3 too.

Steps and batch sizes are the course's budget, not a citation: the tasks have 144 training rows, so
a real model at its lower learning rate gets more passes than the toy, and larger models get smaller
batches so they fit a 16 GB GPU (Colab's T4).

A notebook's ``parameters`` cell writes ``LEARNING_RATE = "auto"`` and lets :func:`resolve` fill it
in, or a number to override:

>>> hp = suggest("smollm2-135m", "lora")
>>> hp.learning_rate, hp.max_steps, hp.batch_size
(0.0002, 200, 16)
>>> resolve("auto", hp.learning_rate), resolve(1e-4, hp.learning_rate)
(0.0002, 0.0001)
>>> suggest(1_800_000, "dpo").learning_rate     # the toy keeps notebook 04's value
0.001
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "METHODS",
    "SIZE_CLASSES",
    "Hyperparameters",
    "format_table",
    "parameter_count",
    "resolve",
    "size_class",
    "suggest",
    "table",
]

METHODS = ("lora", "qlora", "dpo", "prompt_tuning")

#: (name, upper bound in parameters, exclusive), smallest first.
SIZE_CLASSES: tuple[tuple[str, float], ...] = (
    ("toy (< 10M)", 10e6),
    ("small (10M-1B)", 1e9),
    ("medium (1B-15B)", 15e9),
    ("large (>= 15B)", float("inf")),
)

_TOY = "the course-tiny toy's value"
_QLORA_PAPER = "QLoRA paper (Dettmers et al. 2023): 2e-4 for 7B and 13B"
_QLORA_PAPER_LARGE = "QLoRA paper (Dettmers et al. 2023): 1e-4 for 33B and 65B"
_TRL_SFT = "TRL's LoRA example, trl/scripts/sft.py --use_peft: 2e-4 (10x its full fine-tuning 2e-5)"
_TRL_DPO = "TRL's DPO example with LoRA, trl/scripts/dpo.py --use_peft (Qwen2-0.5B-Instruct): 5e-6"
_TRL_DPO_DEFAULT = "TRL's DPOConfig default learning_rate (trl/trainer/dpo_config.py): 1e-6"
_PEFT_PT = (
    "peft's prompt-tuning guide for causal LMs (bloomz-560m, AdamW): 3e-2; Lester et al. 2021 used 0.3 with Adafactor"
)
_BUDGET = "course budget: ~{epochs:.0f} passes over a 144-row task"
_FIT = "course budget: fits a 16 GB GPU (Colab's T4) at sequence length 128"
_FIT_LARGE = "course budget: a small per-device batch; add gradient_accumulation_steps for a larger effective one"

#: The toy's LoRA (and QLoRA) budget: 45 steps at 3e-3 (batch 16). Measured on 2 seeds, shout accuracy from a 0%
#: base: r=8 q/v 62-69%, r=16 q/v 69-71%, r=16 attention 67-73%, r=8 all-linear 81-85% (60 steps: 71-77% q/v,
#: 85-88% all-linear): every lesson's ">= 50 points" holds with room, in three quarters of the time. One source
#: for the table below, ``train_adapter``'s defaults and the launch scripts' (``train_sft.py``, ``distributed.py``).
TOY_LORA_LEARNING_RATE, TOY_LORA_STEPS = 3e-3, 45

# (size class index, method) -> (learning_rate, its source, max_steps, batch_size, where the toy value is)
_RECIPES: dict[tuple[int, str], tuple[float, str, int, int, str]] = {
    (0, "lora"): (
        TOY_LORA_LEARNING_RATE,
        "notebooks 01-03 and 07-09, train_adapter's default",
        TOY_LORA_STEPS,
        16,
        "notebooks/01_lora_training.py",
    ),
    (0, "qlora"): (TOY_LORA_LEARNING_RATE, "notebook 06", TOY_LORA_STEPS, 16, "notebooks/06_qlora.py"),
    (0, "dpo"): (1e-3, "notebook 04's DPO_LR", 30, 8, "notebooks/04_trl.py"),
    (0, "prompt_tuning"): (3e-1, "notebook 05's LR['prompt tuning']", 200, 16, "notebooks/05_prompt_tuning.py"),
    (1, "lora"): (2e-4, _TRL_SFT, 200, 16, ""),
    (1, "qlora"): (2e-4, _QLORA_PAPER, 200, 16, ""),
    (1, "dpo"): (5e-6, _TRL_DPO, 100, 8, ""),
    (1, "prompt_tuning"): (3e-2, _PEFT_PT, 300, 16, ""),
    (2, "lora"): (2e-4, _QLORA_PAPER + "; " + _TRL_SFT, 200, 8, ""),
    (2, "qlora"): (2e-4, _QLORA_PAPER, 200, 8, ""),
    (2, "dpo"): (5e-6, _TRL_DPO, 100, 4, ""),
    (2, "prompt_tuning"): (3e-2, _PEFT_PT, 300, 8, ""),
    (3, "lora"): (1e-4, _QLORA_PAPER_LARGE, 200, 4, ""),
    (3, "qlora"): (1e-4, _QLORA_PAPER_LARGE, 200, 4, ""),
    (3, "dpo"): (1e-6, _TRL_DPO_DEFAULT, 100, 2, ""),
    (3, "prompt_tuning"): (3e-2, _PEFT_PT, 300, 4, ""),
}

_ALIASES = {"prompt-tuning": "prompt_tuning", "prompttuning": "prompt_tuning", "q-lora": "qlora"}


@dataclass(frozen=True)
class Hyperparameters:
    """Suggested ``learning_rate``, ``max_steps`` and ``batch_size``, each with where it comes from.

    ``source`` maps each field name to one sentence: a library default, an example script, a
    paper, or the course's own budget.

    >>> hp = suggest("course-tiny", "lora")
    >>> hp.source["learning_rate"]
    "the course-tiny toy's value (notebooks 01-03 and 07-09, train_adapter's default)"
    """

    learning_rate: float
    max_steps: int
    batch_size: int
    method: str
    size_class: str
    parameters: int
    source: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.learning_rate <= 0 or self.max_steps <= 0 or self.batch_size <= 0:
            raise ValueError(
                f"Hyperparameters must be positive, got learning_rate={self.learning_rate}, "
                f"max_steps={self.max_steps}, batch_size={self.batch_size}."
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "size_class": self.size_class,
            "parameters": self.parameters,
            "learning_rate": self.learning_rate,
            "max_steps": self.max_steps,
            "batch_size": self.batch_size,
            "source": dict(self.source),
        }

    def __repr__(self) -> str:
        head = f"{self.method} on a {self.size_class} model ({self.parameters / 1e6:,.1f}M parameters):"
        rows = [
            f"  learning_rate {self.learning_rate:g}  <- {self.source['learning_rate']}",
            f"  max_steps     {self.max_steps}  <- {self.source['max_steps']}",
            f"  batch_size    {self.batch_size}  <- {self.source['batch_size']}",
        ]
        return "\n".join([head, *rows])

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td><code>{k}</code></td><td>{getattr(self, k):g}</td><td>{html.escape(self.source[k])}</td></tr>"
            for k in ("learning_rate", "max_steps", "batch_size")
        )
        title = html.escape(f"{self.method} on a {self.size_class} model ({self.parameters / 1e6:,.1f}M parameters)")
        return f"<p><b>{title}</b></p><table><tr><th>value</th><th></th><th>source</th></tr>{rows}</table>"


def _count_module(model: Any) -> int:
    total = 0
    for p in model.parameters():
        n = p.numel()
        if type(p).__name__ == "Params4bit":  # bitsandbytes packs two 4-bit weights in a byte
            n *= 2
        total += n
    return total


_SIZE_IN_NAME = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)\s*([mb])(?![a-z])", re.IGNORECASE)


def _count_config_folder(folder: Path) -> int:
    from course_utils.planner import random_model_from_config

    return _count_module(random_model_from_config(str(folder), device="meta"))  # no memory allocated


def parameter_count(model_or_name_or_count: Any) -> int:
    """How many parameters a model has, from the model itself, a name, a folder or a number.

    - a number (``1.7e9``) is returned as an ``int``; a ``torch.nn.Module`` (also a ``PeftModel``, a 4-bit model)
      is counted;
    - ``"course-tiny"``, a shipped config name (``"smollm2-1.7b"``) or a folder with ``config.json``:
      the config is built on the meta device and counted (nothing is downloaded or allocated);
    - any other name, such as a hub id, is read for a size: ``"HuggingFaceTB/SmolLM2-360M-Instruct"``
      -> 360M, ``"Qwen/Qwen2.5-0.5B"`` -> 500M, ``"meta-llama/Llama-3.1-8B"`` -> 8B.

    >>> parameter_count("meta-llama/Llama-3.1-8B")
    8000000000
    >>> parameter_count("course-tiny") < 10_000_000
    True
    """
    if isinstance(model_or_name_or_count, bool):
        raise TypeError("parameter_count got a bool; pass a model, a model name or a parameter count (int).")
    if isinstance(model_or_name_or_count, (int, float)):  # 1.7e9 reads better than 1_700_000_000
        if not model_or_name_or_count > 0:
            raise ValueError(f"A parameter count must be positive, got {model_or_name_or_count}.")
        return int(round(model_or_name_or_count))
    if hasattr(model_or_name_or_count, "parameters") and callable(model_or_name_or_count.parameters):
        return _count_module(model_or_name_or_count)
    if not isinstance(model_or_name_or_count, (str, Path)):
        raise TypeError(
            f"parameter_count got a {type(model_or_name_or_count).__name__}; pass a model, a model name "
            "(course-tiny, smollm2-135m, a hub id, a folder) or a parameter count (int)."
        )
    from course_utils.loading import MODEL_ALIASES
    from course_utils.resources import data_dir

    text = str(model_or_name_or_count).strip()
    folder = Path(MODEL_ALIASES.get(text, text)).expanduser()
    if folder.is_dir() and (folder / "config.json").is_file():
        return _count_config_folder(folder)
    shipped = data_dir("configs") / text.lower()
    if (shipped / "config.json").is_file():
        return _count_config_folder(shipped)
    match = _SIZE_IN_NAME.search(text.rsplit("/", 1)[-1])
    if match:
        number, unit = float(match.group(1)), match.group(2).lower()
        return int(round(number * (1e6 if unit == "m" else 1e9)))
    raise ValueError(
        f"Cannot tell the size of {text!r}: it is not course-tiny, a shipped config "
        "(smollm2-135m, smollm2-360m, smollm2-1.7b, ...), a folder with config.json, nor a name with a size "
        "such as '360M' or '1.7B'. Pass the loaded model or its parameter count, e.g. suggest(model, ...) "
        "or suggest(1_700_000_000, ...)."
    )


def size_class(parameters: int) -> str:
    """The size class of a parameter count: toy (< 10M), small (< 1B), medium (< 15B) or large.

    >>> size_class(1_800_000), size_class(135_000_000), size_class(1_700_000_000)
    ('toy (< 10M)', 'small (10M-1B)', 'medium (1B-15B)')
    """
    return SIZE_CLASSES[_class_index(parameters)][0]


def _class_index(parameters: int) -> int:
    return next(i for i, (_, bound) in enumerate(SIZE_CLASSES) if parameters < bound)


def _method(method: str) -> str:
    key = str(method).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in METHODS:
        raise ValueError(f"Unknown method {method!r}: use one of {', '.join(METHODS)}.")
    return key


def _build(index: int, method: str, parameters: int) -> Hyperparameters:
    lr, lr_source, steps, batch, toy_file = _RECIPES[(index, method)]
    if index == 0:
        lr_source = f"{_TOY} ({lr_source})"
        steps_source = f"{_TOY} ({toy_file}, MAX_STEPS)" if method != "dpo" else f"{_TOY} ({toy_file}, DPO_STEPS)"
        batch_source = f"{_TOY} ({toy_file})"
    else:
        steps_source = _BUDGET.format(epochs=steps * batch / 144)
        batch_source = _FIT if index < 3 else _FIT_LARGE
    return Hyperparameters(
        learning_rate=lr,
        max_steps=steps,
        batch_size=batch,
        method=method,
        size_class=SIZE_CLASSES[index][0],
        parameters=parameters,
        source={"learning_rate": lr_source, "max_steps": steps_source, "batch_size": batch_source},
    )


def suggest(model_or_name_or_param_count: Any, method: str = "lora") -> Hyperparameters:
    """Hyperparameters for training ``method`` on this model, chosen by its parameter count.

    Args:
        model_or_name_or_param_count: a loaded model, a name (``"course-tiny"``, ``"smollm2-360m"``,
            a hub id, a local folder) or a parameter count; see :func:`parameter_count`.
        method: ``"lora"``, ``"qlora"``, ``"dpo"`` or ``"prompt_tuning"``.

    Below 10M parameters the model is the course's toy and keeps the notebooks' values; from there
    on the values of the module's table (:func:`table`), each with its source.

    >>> suggest("HuggingFaceTB/SmolLM2-1.7B-Instruct", "dpo").learning_rate
    5e-06
    >>> suggest("smollm2-360m", "prompt_tuning").learning_rate
    0.03
    """
    method = _method(method)
    parameters = parameter_count(model_or_name_or_param_count)
    return _build(_class_index(parameters), method, parameters)


def resolve(value: Any, suggested: float | int) -> float | int:
    """A parameter cell's value: ``"auto"`` gives ``suggested``; a number (or numeric text) overrides it.

    The result has the type of ``suggested``: a step count or batch size stays an ``int``.

    >>> resolve("auto", 2e-4), resolve(5e-5, 2e-4), resolve("1e-3", 2e-4), resolve(50.0, 200)
    (0.0002, 5e-05, 0.001, 50)
    """
    if isinstance(value, str):
        text = value.strip()
        if text.lower() == "auto":
            return suggested
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f'Expected "auto" or a number, got {value!r}.') from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f'Expected "auto" or a number, got {value!r} ({type(value).__name__}).')
    if not value > 0:
        raise ValueError(f"Expected a positive number or 'auto', got {value!r}.")
    if isinstance(suggested, int) and not isinstance(suggested, bool):
        if float(value) != int(value):
            raise ValueError(f"Expected a whole number (the suggestion is {suggested}), got {value!r}.")
        return int(value)
    return float(value)


def table() -> list[dict[str, Any]]:
    """Every size class and method with its suggested values and the learning rate's source.

    One row per (size class, method): ``size``, ``method``, ``learning_rate``, ``max_steps``,
    ``batch_size``, ``source``. For the README and the notebooks' closing notes;
    ``python -m course_utils.hyperparameters`` prints it.

    >>> rows = table()
    >>> len(rows), rows[0]["size"], rows[0]["method"], rows[0]["learning_rate"]
    (16, 'toy (< 10M)', 'lora', 0.003)
    """
    rows = []
    for index, (name, _) in enumerate(SIZE_CLASSES):
        for method in METHODS:
            hp = _build(index, method, 0 if index == 0 else int(SIZE_CLASSES[index - 1][1]))
            rows.append(
                {
                    "size": name,
                    "method": method,
                    "learning_rate": hp.learning_rate,
                    "max_steps": hp.max_steps,
                    "batch_size": hp.batch_size,
                    "source": hp.source["learning_rate"],
                }
            )
    return rows


def format_table(rows: list[dict[str, Any]] | None = None) -> str:
    """:func:`table` as a Markdown table.

    >>> format_table().splitlines()[0]
    '| size | method | lr | steps | batch | source of the lr |'
    """
    rows = table() if rows is None else rows
    lines = ["| size | method | lr | steps | batch | source of the lr |", "|---|---|---|---|---|---|"]
    lines += [
        f"| {r['size']} | {r['method']} | {r['learning_rate']:g} | {r['max_steps']} | {r['batch_size']} | {r['source']} |"
        for r in rows
    ]
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    print(format_table())
