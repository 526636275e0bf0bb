"""course_utils.prompt_tuning, and a watch on the upstream KV-cache trap of prompt-learning models.

``test_kv_cache_trap_still_there`` passes while peft/transformers generate different text with
``use_cache=True`` than with ``use_cache=False`` for a prompt-tuned, prefix-tuned or p-tuned model.
When it FAILS, upstream has fixed the trap: remove the workaround (``generation_use_cache`` in
course_utils/evaluation.py and its callers) and rewrite notebook 05's section on it.
"""

import copy
import warnings

import pytest
import torch
from prompt_learning_factory import METHODS, make_prompt_learning

from course_utils.data import load_task, split_prompt
from course_utils.prompt_tuning import (
    adapter_bytes_on_disk,
    cache_probe,
    nearest_tokens,
    prompt_tuning_parameter_count,
    virtual_token_embeddings,
)

UPSTREAM_FIXED = (
    "upstream fixed the KV-cache trap for {}: cached and uncached greedy generations now agree. "
    "Remove the workaround (generation_use_cache in course_utils/evaluation.py) and rewrite "
    "notebook 05's section on the trap."
)


@pytest.fixture(scope="module")
def prompts():
    return [split_prompt(m)[0] for m in load_task("shout", "eval")["messages"][:8]]


def _wrap(model, config):
    from peft import get_peft_model

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_peft_model(copy.deepcopy(model), config)


@pytest.fixture(scope="module")
def prompt_tuned(tiny_model, tiny_model_path):
    from peft import PromptTuningConfig, PromptTuningInit

    return _wrap(
        tiny_model,
        PromptTuningConfig(
            task_type="CAUSAL_LM",
            num_virtual_tokens=8,
            prompt_tuning_init=PromptTuningInit.TEXT,
            prompt_tuning_init_text="Answer in capitals.",
            tokenizer_name_or_path=tiny_model_path,
        ),
    )


def test_plain_model_cache_agrees(tiny_model, tiny_tokenizer, prompts):
    assert cache_probe(tiny_model, tiny_tokenizer, prompts).agree


@pytest.mark.parametrize("method", METHODS)
def test_kv_cache_trap_still_there(method, tiny_model, tiny_tokenizer, prompts):
    probe = cache_probe(make_prompt_learning(tiny_model, method), tiny_tokenizer, prompts)
    assert probe.n_differ > 0, UPSTREAM_FIXED.format(method)


def test_virtual_tokens_and_count(prompt_tuned, tiny_model):
    emb = virtual_token_embeddings(prompt_tuned)
    hidden = tiny_model.config.hidden_size
    assert tuple(emb.shape) == (8, hidden)
    trainable = sum(p.numel() for p in prompt_tuned.parameters() if p.requires_grad)
    assert trainable == prompt_tuning_parameter_count(8, hidden) == 8 * hidden


def test_text_init_tokens_are_their_own_nearest(prompt_tuned, tiny_tokenizer):
    # initialised from text: each virtual token IS a vocabulary embedding, so its nearest is itself (cosine 1)
    near = nearest_tokens(prompt_tuned, tiny_tokenizer, k=2)
    assert len(near) == 8 and all(len(row) == 2 for row in near)
    ids = tiny_tokenizer("Answer in capitals.", add_special_tokens=False)["input_ids"]
    expected = [tiny_tokenizer.decode([i]) for i in (ids * 8)[:8]]
    assert [row[0][0] for row in near] == expected
    assert all(row[0][1] == pytest.approx(1.0, abs=1e-4) for row in near)


def test_virtual_tokens_reject_lora(tiny_model):
    from peft import LoraConfig

    with pytest.raises(ValueError, match="not prompt tuning"):
        virtual_token_embeddings(_wrap(tiny_model, LoraConfig(r=2, target_modules=["q_proj"])))


def test_adapter_bytes_on_disk(prompt_tuned, tiny_model):
    size = adapter_bytes_on_disk(prompt_tuned)
    assert 8 * tiny_model.config.hidden_size * 4 <= size < 8 * tiny_model.config.hidden_size * 4 + 4096


def test_parameter_count_validates():
    with pytest.raises(ValueError, match="positive"):
        prompt_tuning_parameter_count(0, 192)
