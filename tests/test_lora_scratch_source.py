"""The LoRA layer notebook 01 writes in a cell is the package's ``LoRALinear``, word for word.

A learner copies the cell; the course imports ``course_utils.lora_scratch.LoRALinear``. When one
changes without the other this test names the first line that differs. Fix: paste the package's
class into the notebook's cell (or the reverse), then ``jupytext --sync notebooks/01_lora_training.py``.
"""

from __future__ import annotations

import difflib
import inspect
from pathlib import Path

from course_utils.lora_scratch import LoRALinear

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "01_lora_training.py"
CLASS_LINE = "class LoRALinear(nn.Module):"


def class_source_in_notebook(text: str) -> str:
    """The ``class LoRALinear`` block of a percent-format notebook: from its line to the next unindented line."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(CLASS_LINE)]
    assert len(starts) == 1, f"{NOTEBOOK.name} defines `{CLASS_LINE}` {len(starts)} times; expected once"
    block = [lines[starts[0]]]
    for line in lines[starts[0] + 1 :]:
        if line and not line[0].isspace():  # the next cell marker (`# %%`) or top-level statement ends the class
            break
        block.append(line)
    return "\n".join(block).rstrip()


def test_class_extraction_stops_at_the_cell_end():
    text = f"# %%\nimport x\n\n\n{CLASS_LINE}\n    a = 1\n\n    def f(self):\n        return 2\n\n\n# %%\nprint(3)\n"
    assert class_source_in_notebook(text) == f"{CLASS_LINE}\n    a = 1\n\n    def f(self):\n        return 2"


def test_notebook_cell_is_the_package_class():
    ours = class_source_in_notebook(NOTEBOOK.read_text())
    package = inspect.getsource(LoRALinear).rstrip()
    diff = "\n".join(
        difflib.unified_diff(
            package.splitlines(), ours.splitlines(), "course_utils/lora_scratch.py", NOTEBOOK.name, lineterm="", n=1
        )
    )
    assert ours == package, f"LoRALinear differs between the package and the notebook:\n{diff}"
