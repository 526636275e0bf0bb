"""The course's core promise, end to end on the default model: LoRA teaches a skill in seconds."""

from __future__ import annotations

import copy

import pytest
from peft import LoraConfig, PeftModel

from course_utils.data import load_task
from course_utils.evaluation import evaluate_task
from course_utils.hyperparameters import suggest
from course_utils.training import cpu_friendly_args, train_lora


@pytest.mark.notebook_covers("03_merging")  # claims the same lift: train_lora, the suggested budget, r=8 (all linear)
def test_lora_on_attention_lifts_shout_accuracy_by_50_points_over_the_base(tiny_model, tiny_tokenizer):
    eval_split = load_task("shout", "eval")
    before = evaluate_task(tiny_model, tiny_tokenizer, eval_split, progress=False)

    config = LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
    )
    hp = suggest(tiny_model, "lora")  # the notebooks' budget: a step count, never a time budget
    run = train_lora(
        copy.deepcopy(tiny_model),
        tiny_tokenizer,
        load_task("shout", "train"),
        config,
        max_steps=hp.max_steps,
        learning_rate=hp.learning_rate,
        batch_size=hp.batch_size,
    )
    after = evaluate_task(run.model, tiny_tokenizer, eval_split, progress=False)

    steps = run.trainer.state.global_step
    print(
        f"\nshout eval accuracy: base {before.accuracy:.1%} -> LoRA r=8 q,v {after.accuracy:.1%} "
        f"({steps} steps, {run.seconds:.1f} s of training)"
    )
    # the lesson's claim, as the notebooks phrase it: a lift over the base on the same model (measured: 0% -> 71-77%)
    assert before.accuracy <= 0.20
    assert after.accuracy - before.accuracy >= 0.50
    assert run.model.peft_config["default"].r <= 16
    assert run.losses[-1] < run.losses[0]


def test_training_leaves_the_base_weights_frozen(tiny_model, tiny_tokenizer):
    model = copy.deepcopy(tiny_model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    run = train_lora(
        model,
        tiny_tokenizer,
        load_task("shout", "train").select(range(32)),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]),
        max_steps=3,
    )
    trainable = [n for n, p in run.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    base = run.model.get_base_model()
    for name, param in base.named_parameters():
        if "lora_" not in name:
            key = name.replace(".base_layer", "")
            assert key in before and bool((param == before[key]).all()), name


def test_cpu_friendly_args_never_ask_for_bf16_on_cpu():
    import torch

    args = cpu_friendly_args(max_steps=1)
    if not torch.cuda.is_available():
        assert args.bf16 is False and args.use_cpu is True
    assert args.dataloader_pin_memory is False and args.save_strategy == "no"


def test_the_trainers_scratch_folder_goes_at_exit_only_when_empty(tmp_path, monkeypatch):
    """cpu_friendly_args() without output_dir leaves no empty /tmp/course-run-* behind, and never deletes a save."""
    import atexit
    import os

    from course_utils import training

    registered = []
    monkeypatch.setattr(atexit, "register", lambda func, *args: registered.append((func, args)))
    empty = cpu_friendly_args(max_steps=1).output_dir
    kept = cpu_friendly_args(max_steps=1).output_dir
    monkeypatch.undo()
    assert [args for _, args in registered] == [(empty,), (kept,)]
    with open(os.path.join(kept, "adapter_model.safetensors"), "w") as f:
        f.write("a learner's save")
    for func, args in registered:  # what the interpreter does at exit
        func(*args)
    assert not os.path.exists(empty)
    assert os.path.exists(os.path.join(kept, "adapter_model.safetensors"))
    assert cpu_friendly_args(str(tmp_path), max_steps=1).output_dir == str(tmp_path)  # the learner's folder: no cleanup
    assert training._remove_if_empty is registered[0][0]


def test_a_learners_own_jsonl_file_trains_and_evaluates_end_to_end(tmp_path, tiny_model, tiny_tokenizer):
    """The path a learner takes with their own data: a JSONL file -> load_task -> train_lora -> evaluate_task."""
    import json

    facts = [("carp", "nuts"), ("owl", "mice"), ("bee", "nectar"), ("fox", "eggs"), ("eel", "worms"), ("mole", "grubs")]
    path = tmp_path / "my_task.jsonl"
    path.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": f"The {a} eats {f}. What does the {a} eat?"},
                        {"role": "assistant", "content": f"THE {a.upper()} EATS {f.upper()}."},
                    ]
                }
            )
            + "\n"
            for a, f in facts
        )
    )
    task = load_task(path, eval_fraction=0.34)
    assert (len(task["train"]), len(task["eval"])) == (3, 3)
    run = train_lora(
        copy.deepcopy(tiny_model),
        tiny_tokenizer,
        task["train"],
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
        max_steps=4,
        batch_size=3,
    )
    assert run.trainer.state.global_step == 4 and run.losses
    result = evaluate_task(run.model, tiny_tokenizer, task["eval"], progress=False, scorer="contains")
    assert result.scorer == "contains" and result.total == 3 and 0.0 <= result.accuracy <= 1.0
    assert {e["expected"] for e in result.examples} <= {f"THE {a.upper()} EATS {f.upper()}." for a, f in facts}


@pytest.mark.parametrize(
    "rows, message",
    [
        (
            [{"text": "hello"}],
            r"train_lora needs chat rows: a `messages` column .* or conversational `prompt`/`completion`",
        ),
        ([{"prompt": "Q?", "completion": "A."}], r"has columns \['prompt', 'completion'\] \(1 rows\)"),
        ([], r"train_lora got an empty dataset"),
    ],
)
def test_a_dataset_without_chat_rows_is_refused_before_the_model_is_wrapped(tiny_model, tiny_tokenizer, rows, message):
    from datasets import Dataset

    model = copy.deepcopy(tiny_model)
    with pytest.raises(ValueError, match=message):
        train_lora(model, tiny_tokenizer, Dataset.from_list(rows), LoraConfig(r=4, target_modules=["q_proj"]))
    assert not isinstance(model, PeftModel) and not hasattr(model, "peft_config")
