"""Test helper shared by the KV-cache tests: prompt-learning models on course-tiny and an uncached reference.

The three prompt-learning methods of peft that notebook 05 and the helpers care about: prompt
tuning, prefix tuning and p-tuning (a small encoder that produces the virtual tokens). Each is
freshly initialised (seeded) on a deep copy of the shared model: no training, so the fixtures
stay fast, and their cached generations already go wrong (tests/test_prompt_tuning.py checks that).
"""

from __future__ import annotations

import copy
import warnings

import torch

METHODS = ("prompt tuning", "prefix tuning", "p-tuning")


def make_prompt_learning(model, method: str, num_virtual_tokens: int = 8, seed: int = 0):
    """A ``PeftModel`` of ``method`` (one of :data:`METHODS`) on a deep copy of ``model``, in eval mode."""
    from peft import (
        PrefixTuningConfig,
        PromptEncoderConfig,
        PromptTuningConfig,
        get_peft_model,
    )

    configs = {
        "prompt tuning": PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=num_virtual_tokens),
        "prefix tuning": PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=num_virtual_tokens),
        "p-tuning": PromptEncoderConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=num_virtual_tokens, encoder_hidden_size=64
        ),
    }
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(copy.deepcopy(model), configs[method]).eval()
    if method == "prefix tuning":
        # peft starts the prefix's keys and values at N(0, 1): too weak to change this model's greedy answers, so
        # dropping the prefix (what the cached path does) would go unseen. x3 acts like a trained prefix.
        with torch.no_grad():
            peft_model.prompt_encoder["default"].embedding.weight.mul_(3.0)
    return peft_model


@torch.no_grad()
def raw_answers(model, tokenizer, prompts, *, use_cache: bool, max_new_tokens: int = 8) -> list[str]:
    """Greedy answers from a plain ``model.generate`` call, one prompt at a time: the reference.

    Written without course_utils on purpose, so the helpers are compared with the library itself.
    """
    answers = []
    for prompt in prompts:
        enc = tokenizer.apply_chat_template(
            [prompt], add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        )
        with warnings.catch_warnings():  # the cached run of a prompt-learning model warns (on purpose here)
            warnings.simplefilter("ignore")
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                use_cache=use_cache,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        answers.append(tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip())
    return answers
