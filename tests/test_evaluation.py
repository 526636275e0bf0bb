"""course_utils.evaluation: exact-match accuracy and preference accuracy on any model."""

from __future__ import annotations

import copy
import logging
import warnings

import pytest
import torch
from prompt_learning_factory import METHODS, make_prompt_learning, raw_answers

from course_utils import evaluation
from course_utils.data import load_task, split_prompt
from course_utils.evaluation import (
    PromptLearningCacheWarning,
    evaluate_task,
    generate_answers,
    generation_use_cache,
    is_prompt_learning,
    preference_accuracy,
    sequence_logprob,
)


def test_base_model_lacks_the_course_skills(tiny_model, tiny_tokenizer):
    for name in ("shout", "terse", "topic"):
        result = evaluate_task(tiny_model, tiny_tokenizer, load_task(name, "eval"), progress=False, name=name)
        assert result.total == 48
        assert result.accuracy <= 0.2, result
    assert preference_accuracy(tiny_model, tiny_tokenizer, load_task("prefs", "eval")) <= 0.2


def test_exact_match_counts_a_right_answer(tiny_model, tiny_tokenizer):
    from datasets import Dataset

    q = [{"role": "user", "content": "Where does the owl live?"}]
    ds = Dataset.from_list(
        [
            {"messages": q + [{"role": "assistant", "content": "The owl lives in the forest."}]},
            {"messages": q + [{"role": "assistant", "content": "The owl lives in the cave."}]},
        ]
    )
    result = evaluate_task(tiny_model, tiny_tokenizer, ds, progress=False, n_examples=2)
    assert (result.correct, result.total) == (1, 2)
    assert [e["correct"] for e in result.examples] == [True, False]
    assert "50.0%" in repr(result) and "<table>" in result._repr_html_()


def _fixed_answers(monkeypatch, answers):
    monkeypatch.setattr(evaluation, "generate_answers", lambda model, tok, prompts, **kw: list(answers))


def _carp_rows():
    from datasets import Dataset

    q = [{"role": "user", "content": "The carp eats nuts. What does the carp eat?"}]
    return Dataset.from_list(
        [{"messages": q + [{"role": "assistant", "content": a}]} for a in ("THE CARP EATS NUTS.", "nuts", "Nuts.")]
    )


@pytest.mark.parametrize(
    "scorer, correct, name",
    [
        ("exact", [True, False, False], "exact"),
        ("contains", [True, True, False], "contains"),
        (lambda answer, expected: answer.endswith("."), [True, True, True], "<lambda>"),
    ],
)
def test_scorers(monkeypatch, tiny_tokenizer, scorer, correct, name):
    # the model's answers: the reference itself, a chatty sentence holding it, and a wrong one
    _fixed_answers(monkeypatch, ["THE CARP EATS NUTS.", "The carp eats NUTS, of course.", "It eats berries."])
    result = evaluate_task(None, tiny_tokenizer, _carp_rows(), n_examples=3, scorer=scorer)
    assert [e["correct"] for e in result.examples] == correct
    assert result.correct == sum(correct) and result.scorer == name and result.to_dict()["scorer"] == name
    assert ("scorer" in repr(result)) == (name != "exact")  # the default keeps today's display


def test_unknown_scorer_lists_the_choices(tiny_tokenizer):
    with pytest.raises(ValueError, match="'exact'.*'contains'.*a function"):
        evaluate_task(None, tiny_tokenizer, _carp_rows(), scorer="fuzzy")


def test_batched_generation_matches_one_by_one(tiny_model, tiny_tokenizer):
    prompts = [
        [{"role": "user", "content": q}]
        for q in ("What color is the fox?", "What kind of creature is the eel?", "What does the bee eat?")
    ]
    batched = generate_answers(tiny_model, tiny_tokenizer, prompts, batch_size=3, progress=False)
    single = [generate_answers(tiny_model, tiny_tokenizer, [p], progress=False)[0] for p in prompts]
    assert batched == single


def test_sequence_logprob_prefers_the_known_answer(tiny_model, tiny_tokenizer):
    q = [{"role": "user", "content": "Where does the owl live?"}]
    assert sequence_logprob(tiny_model, tiny_tokenizer, q, "The owl lives in the forest.") > sequence_logprob(
        tiny_model, tiny_tokenizer, q, "The owl lives in the cave."
    )


def test_preference_data_is_rejected_by_evaluate_task(tiny_model, tiny_tokenizer):
    with pytest.raises(ValueError, match="preference_accuracy"):
        evaluate_task(tiny_model, tiny_tokenizer, load_task("prefs", "eval"), progress=False)


# ------------------------------------------------------------------ the KV-cache trap of prompt-learning models
# With today's peft/transformers a prompt-learning model (prompt tuning, prefix tuning, p-tuning) generates
# wrong text with use_cache=True (tests/test_prompt_tuning.py watches for the upstream fix). Every course_utils
# function that generates must give the use_cache=False answers by default, and keep the cache for other models.

N_NEW = 8  # new tokens per answer: enough for the cached path to go wrong, short enough to stay fast


@pytest.fixture(scope="module")
def questions():
    return [split_prompt(m)[0] for m in load_task("shout", "eval")["messages"][:6]]


@pytest.fixture(scope="module", params=METHODS)
def prompt_learner(request, tiny_model):
    return make_prompt_learning(tiny_model, request.param)


@pytest.fixture
def fresh_notice(monkeypatch):
    """Forget that the once-per-process "cache turned off" line was already printed."""
    monkeypatch.setattr(evaluation, "_cache_notice_shown", False)


def test_prompt_learning_is_detected_from_the_peft_config(prompt_learner, tiny_model):
    from peft import LoraConfig, get_peft_model

    assert is_prompt_learning(prompt_learner)
    assert not is_prompt_learning(tiny_model)
    assert not is_prompt_learning(get_peft_model(copy.deepcopy(tiny_model), LoraConfig(r=2, target_modules=["q_proj"])))


def test_generators_match_the_uncached_reference(prompt_learner, tiny_tokenizer, questions):
    from datasets import Dataset

    reference = raw_answers(prompt_learner, tiny_tokenizer, questions, use_cache=False, max_new_tokens=N_NEW)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PromptLearningCacheWarning)  # the default path must not take the cache
        # batch_size=1 like the reference: left padding is a separate matter from the cache
        answers = generate_answers(
            prompt_learner, tiny_tokenizer, questions, max_new_tokens=N_NEW, batch_size=1, progress=False
        )
        # a dataset whose expected answers ARE the uncached reference: the default evaluation scores 100%
        ds = Dataset.from_list(
            [{"messages": q + [{"role": "assistant", "content": r}]} for q, r in zip(questions, reference)]
        )
        result = evaluate_task(prompt_learner, tiny_tokenizer, ds, max_new_tokens=N_NEW, batch_size=1, progress=False)
    assert answers == reference
    assert result.accuracy == 1.0, result


def test_reference_capture_matches_the_uncached_reference(prompt_learner, tiny_tokenizer):
    from course_utils.validation import capture_reference, compare_to_reference

    rows = load_task("shout", "eval").select(range(4))
    default = capture_reference(prompt_learner, rows, tiny_tokenizer, max_new_tokens=N_NEW)
    uncached = capture_reference(
        prompt_learner, rows, tiny_tokenizer, max_new_tokens=N_NEW, generate_kwargs={"use_cache": False}
    )
    assert default.generations == uncached.generations
    assert torch.equal(default.logits, uncached.logits)  # virtual-token positions are not in the logits
    assert compare_to_reference(prompt_learner, default).passed


def test_explicit_use_cache_true_is_honoured_with_a_warning(prompt_learner, tiny_tokenizer, questions):
    cached = raw_answers(prompt_learner, tiny_tokenizer, questions, use_cache=True, max_new_tokens=N_NEW)
    with pytest.warns(PromptLearningCacheWarning, match="KV-cache trap"):
        answers = generate_answers(
            prompt_learner,
            tiny_tokenizer,
            questions,
            max_new_tokens=N_NEW,
            use_cache=True,
            batch_size=1,
            progress=False,
        )  # raw_answers is one by one
    assert answers == cached


def test_cache_off_is_said_once_in_one_line(tiny_model, tiny_tokenizer, questions, fresh_notice, caplog):
    models = [make_prompt_learning(tiny_model, m) for m in METHODS]
    with caplog.at_level(logging.INFO, logger="course_utils"):
        for model in models:
            generate_answers(model, tiny_tokenizer, questions[:1], max_new_tokens=2, progress=False)
            assert generation_use_cache(model) is False
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1, said
    assert "use_cache=False" in said[0] and "PROMPT_TUNING" in said[0] and "\n" not in said[0]


def test_other_models_keep_the_cache(tiny_model, tiny_tokenizer, questions, fresh_notice, caplog):
    from peft import LoraConfig, get_peft_model

    from course_utils.validation import capture_reference

    base = copy.deepcopy(tiny_model)
    lora = get_peft_model(copy.deepcopy(tiny_model), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    with caplog.at_level(logging.INFO, logger="course_utils"), warnings.catch_warnings():
        warnings.simplefilter("error", PromptLearningCacheWarning)
        for model in (base, lora):
            seen = []
            original = model.generate

            def spy(*args, _original=original, _seen=seen, **kwargs):
                config = kwargs.get("generation_config")
                _seen.append(kwargs["use_cache"] if config is None else config.use_cache)
                return _original(*args, **kwargs)

            model.generate = spy
            assert generation_use_cache(model) is True
            generate_answers(model, tiny_tokenizer, questions[:2], max_new_tokens=2, progress=False)
            capture_reference(model, ["What color is the fox?"], tiny_tokenizer, max_new_tokens=2)
            assert seen == [True, True]
    assert not caplog.records  # nothing to say for them


def test_empty_dataset_is_one_clear_error(tiny_model, tiny_tokenizer):
    empty = load_task("shout", "eval").select([])
    with pytest.raises(ValueError, match=r"evaluate_task got an empty dataset: The dataset 'shout-eval' has 0 rows"):
        evaluate_task(tiny_model, tiny_tokenizer, empty, progress=False, name="shout-eval")


def test_conversational_prompt_completion_rows_are_evaluated_like_messages(tiny_model, tiny_tokenizer):
    from course_utils.data import to_prompt_completion

    rows = load_task("shout", "eval").select(range(4))
    as_messages = evaluate_task(tiny_model, tiny_tokenizer, rows, progress=False)
    as_pairs = evaluate_task(tiny_model, tiny_tokenizer, to_prompt_completion(rows), progress=False)
    assert as_pairs.total == 4 and as_pairs.examples == as_messages.examples
