"""course_utils.evaluation: exact-match accuracy and preference accuracy on any model."""
from __future__ import annotations

import pytest

from course_utils.data import load_task
from course_utils.evaluation import evaluate_task, generate_answers, preference_accuracy, sequence_logprob


def test_base_model_lacks_the_course_skills(tiny_model, tiny_tokenizer):
    for name in ("shout", "terse", "topic"):
        result = evaluate_task(tiny_model, tiny_tokenizer, load_task(name, "eval"), progress=False, name=name)
        assert result.total == 48
        assert result.accuracy <= 0.2, result
    assert preference_accuracy(tiny_model, tiny_tokenizer, load_task("prefs", "eval")) <= 0.2


def test_exact_match_counts_a_right_answer(tiny_model, tiny_tokenizer):
    from datasets import Dataset

    q = [{"role": "user", "content": "Where does the owl live?"}]
    ds = Dataset.from_list([{"messages": q + [{"role": "assistant", "content": "The owl lives in the forest."}]},
                            {"messages": q + [{"role": "assistant", "content": "The owl lives in the cave."}]}])
    result = evaluate_task(tiny_model, tiny_tokenizer, ds, progress=False, n_examples=2)
    assert (result.correct, result.total) == (1, 2)
    assert [e["correct"] for e in result.examples] == [True, False]
    assert "50.0%" in repr(result) and "<table>" in result._repr_html_()


def test_batched_generation_matches_one_by_one(tiny_model, tiny_tokenizer):
    prompts = [[{"role": "user", "content": q}] for q in
               ("What color is the fox?", "What kind of creature is the eel?", "What does the bee eat?")]
    batched = generate_answers(tiny_model, tiny_tokenizer, prompts, batch_size=3, progress=False)
    single = [generate_answers(tiny_model, tiny_tokenizer, [p], progress=False)[0] for p in prompts]
    assert batched == single


def test_sequence_logprob_prefers_the_known_answer(tiny_model, tiny_tokenizer):
    q = [{"role": "user", "content": "Where does the owl live?"}]
    assert sequence_logprob(tiny_model, tiny_tokenizer, q, "The owl lives in the forest.") > \
        sequence_logprob(tiny_model, tiny_tokenizer, q, "The owl lives in the cave.")


def test_preference_data_is_rejected_by_evaluate_task(tiny_model, tiny_tokenizer):
    with pytest.raises(ValueError, match="preference_accuracy"):
        evaluate_task(tiny_model, tiny_tokenizer, load_task("prefs", "eval"), progress=False)
