"""The DPO-with-LoRA figure of notebook 04: it builds, and it shows what the lesson says."""

from __future__ import annotations

import matplotlib
import pytest

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

from course_utils.figures.trl import TRAINED, draw_dpo_with_lora  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_policy_and_reference_are_one_model_with_the_adapter_on_and_off():
    fig = draw_dpo_with_lora()
    texts = " ".join(_texts(fig))
    for needle in ("adapter on", "adapter off", "disable_adapter", "ref_model=None", "LoRA adapter", "base model"):
        assert needle in texts, f"{needle!r} missing from the figure's texts: {texts!r}"


def test_only_the_adapter_and_the_policy_are_drawn_as_trained():
    fig = draw_dpo_with_lora()
    boxes = [p for p in fig.axes[0].patches if isinstance(p, FancyBboxPatch)]
    trained = [p for p in boxes if matplotlib.colors.to_hex(p.get_facecolor()) == TRAINED]
    assert len(boxes) >= 7, len(boxes)
    assert len(trained) == 2, f"expected the adapter and the policy in the trained colour, got {len(trained)}"


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_the_rewards_carry_beta(beta: float):
    rewards = [t for t in _texts(draw_dpo_with_lora(beta=beta)) if t.startswith("$r^")]
    assert len(rewards) == 2, rewards
    assert all(f"{beta:g}" in t and r"\pi_{ref}" in t for t in rewards), rewards


def test_the_figure_is_deterministic():
    assert _texts(draw_dpo_with_lora()) == _texts(draw_dpo_with_lora())
