"""An adapter switcher for notebooks: pick an adapter (or the base model), type a prompt, see the answer.

The widget needs ``ipywidgets`` and a live kernel. Where widgets are not rendered (nbval, a
static HTML export, a terminal) the same object still shows a plain table of every adapter's
answer to the default prompt, so the cell's output is never empty.

>>> switcher = adapter_switcher(peft_model, tokenizer, "What color is the fox?")   # doctest: +SKIP
>>> switcher.answer("terse")                                                        # doctest: +SKIP
'gold'
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from course_utils.tables import Html, html_table

__all__ = ["BASE_LABEL", "AdapterSwitcher", "adapter_switcher"]

#: The dropdown entry that runs the base model (every adapter disabled).
BASE_LABEL = "base (adapters disabled)"


class AdapterSwitcher:
    """Answers one prompt with any loaded adapter of a ``PeftModel``, or with the base model.

    ``answer(choice, prompt)`` switches with ``set_adapter(name, inference_mode=True)``, or runs
    under ``disable_adapter()`` for :data:`BASE_LABEL`, then puts back the previously active
    adapter and every parameter's ``requires_grad`` (both calls can make an adapter trainable).
    Answers come from :func:`course_utils.evaluation.generate_answers`, so a prompt-learning adapter
    generates without the KV cache (its cached generation is wrong today) and the others with it.
    ``widget()`` builds the ipywidgets UI; ``table()`` is the static fallback.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        prompt: str = "What color is the fox?",
        *,
        adapters: Sequence[str] | None = None,
        max_new_tokens: int = 24,
    ) -> None:
        if not hasattr(model, "peft_config"):
            raise TypeError(
                f"AdapterSwitcher needs a PeftModel with adapters loaded, got {type(model).__name__}. "
                "Load one with PeftModel.from_pretrained(base_model, adapter_folder)."
            )
        self.model = model
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.adapters = list(adapters) if adapters is not None else list(model.peft_config)
        unknown = [a for a in self.adapters if a not in model.peft_config]
        if unknown:
            raise ValueError(f"Unknown adapter(s) {unknown}; this model has {list(model.peft_config)}.")
        self.choices = [*self.adapters, BASE_LABEL]
        self.max_new_tokens = max_new_tokens
        self._dropdown: Any = None
        self._prompt_box: Any = None
        self._output: Any = None
        self._widget: Any = None

    # ------------------------------------------------------------------ the model side
    def answer(self, choice: str, prompt: str | None = None) -> str:
        """Greedy answer of ``choice`` (an adapter name or :data:`BASE_LABEL`) to ``prompt``."""
        from course_utils.evaluation import generate_answers

        if choice not in self.choices:
            raise ValueError(f"Unknown choice {choice!r}; pick one of {self.choices}.")
        messages = [[{"role": "user", "content": prompt if prompt is not None else self.prompt}]]
        kwargs = {"max_new_tokens": self.max_new_tokens, "progress": False}
        # set_adapter() and leaving disable_adapter() both mark the active adapter trainable (peft 0.21):
        # remember every flag and put it back, so looking at answers never changes what would train.
        flags = [(p, p.requires_grad) for p in self.model.parameters()]
        previous = self.model.active_adapter
        try:
            if choice == BASE_LABEL:
                with self.model.disable_adapter():
                    return generate_answers(self.model, self.tokenizer, messages, **kwargs)[0]
            self.model.set_adapter(choice, inference_mode=True)
            return generate_answers(self.model, self.tokenizer, messages, **kwargs)[0]
        finally:
            if self.model.active_adapter != previous:
                self.model.set_adapter(previous, inference_mode=True)
            for p, flag in flags:
                p.requires_grad_(flag)

    def table(self, prompt: str | None = None) -> list[tuple[str, str]]:
        """(choice, answer) for every adapter and the base model: the static view of the switcher."""
        return [(choice, self.answer(choice, prompt)) for choice in self.choices]

    # ------------------------------------------------------------------ the widget side
    def widget(self) -> Any:
        """The ipywidgets UI: a dropdown of adapters, a prompt box and the answer (built once)."""
        if self._widget is not None:
            return self._widget
        try:
            import ipywidgets as widgets
        except ImportError as err:  # pragma: no cover - ipywidgets is a dependency
            raise ImportError("The adapter switcher needs ipywidgets: pip install ipywidgets") from err
        self._dropdown = widgets.Dropdown(options=self.choices, value=self.choices[0], description="adapter")
        self._prompt_box = widgets.Text(
            value=self.prompt, description="prompt", continuous_update=False, layout=widgets.Layout(width="60%")
        )
        self._output = widgets.HTML(value="")
        self._dropdown.observe(self.on_change, names="value")
        self._prompt_box.observe(self.on_change, names="value")
        self._widget = widgets.VBox([widgets.HBox([self._dropdown, self._prompt_box]), self._output])
        self.on_change()
        return self._widget

    def on_change(self, change: Any = None) -> str:
        """Callback of the dropdown and the prompt box: answer with the current choice and show it."""
        if self._dropdown is None:
            self.widget()
        choice, prompt = self._dropdown.value, self._prompt_box.value
        text = self.answer(choice, prompt)
        self._output.value = f"<b>{html.escape(choice)}</b>: <code>{html.escape(text)}</code>"
        return text

    # ------------------------------------------------------------------ display
    def _rows(self) -> list[tuple[str, str]]:
        return self.table()

    def __repr__(self) -> str:
        rows = self._rows()
        width = max(len(c) for c, _ in rows)
        lines = [f"Answers to {self.prompt!r}:"] + [f"  {c:<{width}}  {a}" for c, a in rows]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = [(c, Html(f"<code>{html.escape(a)}</code>")) for c, a in self._rows()]
        return f"<p>Answers to <i>{html.escape(self.prompt)}</i>:</p>" + html_table(["adapter", "answer"], rows)


def adapter_switcher(
    model: Any,
    tokenizer: Any,
    prompt: str = "What color is the fox?",
    *,
    adapters: Sequence[str] | None = None,
    max_new_tokens: int = 24,
    show_widget: bool = True,
) -> AdapterSwitcher:
    """Display the switcher widget (when ipywidgets can be displayed) and return the switcher.

    The returned object's repr is the static table of every adapter's answer to ``prompt``, so
    the cell shows the answers even where the widget is not rendered (nbval, HTML export).
    """
    switcher = AdapterSwitcher(model, tokenizer, prompt, adapters=adapters, max_new_tokens=max_new_tokens)
    if show_widget:
        try:
            from IPython.display import display

            display(switcher.widget())
        except ImportError:  # no IPython / ipywidgets: the static table still shows
            pass
    return switcher
