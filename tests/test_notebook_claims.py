"""Every lesson's outcome is checked, and what nbval compares is the same on every machine.

Static checks over the committed notebooks' JSON (nothing is executed; fast). Each rule is a
function that takes a notebook (its JSON as a dict) and returns the offending cells as
``Offence`` rows (notebook, cell index, first line, why); the tests run the rules on synthetic
good and bad notebooks first, so a rule that cannot fail is caught here, then on
``notebooks/*.ipynb``, listing every offender at once.

The rules:

1. **No failed claim is committed.** No stdout output holds a line ``<statement>: NO``, the way
   :func:`course_utils.notebook.expect` prints a claim that did not hold (the same reader as
   ``course-utils run``: :func:`course_utils.runner.failed_claims`).
2. **An ignored output is backed by a claim.** A code cell tagged ``nbval-ignore-output`` (its
   numbers differ between machines, so nbval does not compare them) is followed, within the next
   two code cells, by a cell that calls ``expect(``, which checks the lesson on those numbers;
   or its source has a comment line starting ``# shown, not claimed:`` saying why nothing is
   claimed (a timing, a generated text, the set-up banner).
3. **A compared output does not depend on the device.** In a compared code cell (not tagged
   ``nbval-ignore-output`` or ``nbval-skip``):

   - no call to ``setup(`` or ``requires_cuda(``: both print what the machine has;
   - nothing *shown* mentions a *device expression*. Shown: the arguments of ``print(...)`` and
     ``display(...)``, the statement (first argument) of ``expect(...)``, every f-string, and
     the cell's last line when it is a bare expression (Jupyter displays it). A device expression
     is ``torch.cuda.…``, ``torch.backends.mps.…``, an attribute ``.device``, a subscript
     ``[...]["device"]`` (``info["device"]``), a call to ``resolve_device(...)`` or to any function
     whose name has a ``cuda``/``mps`` part (``requires_cuda``), the name ``DEVICE``, or a name the notebook assigns
     from a device expression (``device = resolve_device(DEVICE)``, ``ON_GPU =
     torch.cuda.is_available()``; arguments of other calls do not count: ``model =
     load_model(MODEL, device=DEVICE)`` does not make ``model`` a device expression);
   - no ``print``/``display``/``expect`` under an ``if`` (or a conditional expression) whose test
     is a device expression: one branch prints on a GPU, the other on a CPU.

4. **A claim is compared.** A cell that calls ``expect(`` is not itself tagged
   ``nbval-ignore-output`` or ``nbval-skip``: otherwise nbval re-runs it on another machine
   without checking its verdict.

These fail on notebooks that break a rule: fix the notebook (move the number to an ignored cell
and claim it in the next one, or add the ``# shown, not claimed:`` reason), not this test.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from course_utils.runner import failed_claims

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))

IGNORED, SKIPPED = "nbval-ignore-output", "nbval-skip"
EXEMPT_MARKER = "# shown, not claimed:"
CLAIM_WINDOW = 2  # code cells after an ignored one in which its claim must come
SHOWING_CALLS = {"print", "display"}
PRINTING_DEVICE_CALLS = {"setup", "requires_cuda"}
DEVICE_ROOTS = ("torch.cuda", "torch.backends.mps")
_DEVICE_WORDS = re.compile(r"(^|_)(cuda|mps)(_|$)", re.IGNORECASE)  # requires_cuda, is_mps_built; not json.dumps


@dataclass(frozen=True)
class Offence:
    notebook: str
    cell: int
    first_line: str
    why: str

    def __str__(self) -> str:
        return f"{self.notebook} cell {self.cell} `{self.first_line}`: {self.why}"


# --------------------------------------------------------------------------- helpers


def _source(cell: dict[str, Any]) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def _tags(cell: dict[str, Any]) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _first_line(cell: dict[str, Any]) -> str:
    return next((ln.strip() for ln in _source(cell).splitlines() if ln.strip()), "")[:100]


def _code_cells(nb: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """(index in the notebook, cell) of every code cell."""
    return [(i, c) for i, c in enumerate(nb["cells"]) if c.get("cell_type") == "code"]


def _compared(cell: dict[str, Any]) -> bool:
    return not {IGNORED, SKIPPED} & set(_tags(cell))


def _parse(source: str) -> ast.Module | None:
    """The cell's syntax tree; IPython magics and shell lines (``%``, ``!``) become ``pass``."""
    lines = ["pass" if ln.lstrip().startswith(("%", "!")) else ln for ln in source.splitlines()]
    try:
        return compile("\n".join(lines), "<cell>", "exec", ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    except SyntaxError:
        return None


def _call_name(node: ast.Call) -> str:
    func = node.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def _calls(tree: ast.AST, names: set[str]) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and _call_name(n) in names]


# --------------------------------------------------------------------------- rule 1


def committed_failed_claims(nb: dict[str, Any], name: str = "notebook") -> list[Offence]:
    """Rule 1: committed outputs with a ``<statement>: NO`` line."""
    cells = nb["cells"]
    return [
        Offence(name, c.cell_index, _first_line(cells[c.cell_index]), f"claim not met: {c}") for c in failed_claims(nb)
    ]


# --------------------------------------------------------------------------- rule 2


def unclaimed_ignored_outputs(nb: dict[str, Any], name: str = "notebook") -> list[Offence]:
    """Rule 2: ignored-output cells with no ``expect(`` in the next two code cells and no exemption."""
    code = _code_cells(nb)
    found = []
    for k, (i, cell) in enumerate(code):
        if IGNORED not in _tags(cell):
            continue
        if any(ln.strip().startswith(EXEMPT_MARKER) for ln in _source(cell).splitlines()):
            continue
        following = [c for _, c in code[k + 1 : k + 1 + CLAIM_WINDOW]]
        if not any("expect(" in _source(c) for c in following):
            found.append(
                Offence(
                    name,
                    i,
                    _first_line(cell),
                    f"output ignored by nbval, but no `expect(` in the next {CLAIM_WINDOW} code cells "
                    f"and no `{EXEMPT_MARKER} <reason>` comment",
                )
            )
    return found


# --------------------------------------------------------------------------- rule 3


class _DeviceNames:
    """Which names a notebook assigns from a device expression (across all its cells, in order)."""

    def __init__(self) -> None:
        self.names: set[str] = {"DEVICE"}

    def is_device(self, node: ast.AST) -> bool:
        """Does ``node`` contain a device expression (not counting arguments of ordinary calls)?"""
        if isinstance(node, ast.Name):
            return node.id in self.names
        if isinstance(node, ast.Attribute):
            if node.attr == "device" or ast.unparse(node).startswith(DEVICE_ROOTS):
                return True
            return self.is_device(node.value)
        if isinstance(node, ast.Subscript):
            key = node.slice
            if isinstance(key, ast.Constant) and key.value == "device":
                return True
            return self.is_device(node.value)
        if isinstance(node, ast.Call):
            name = _call_name(node)
            # arguments of other calls are not what the value is: load_model(MODEL, device=DEVICE) is a model
            return bool(name == "resolve_device" or _DEVICE_WORDS.search(name) or self.is_device(node.func))
        return any(self.is_device(child) for child in ast.iter_child_nodes(node))

    def learn(self, tree: ast.AST) -> None:
        for node in ast.walk(tree):
            assigns = isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)) and node.value is not None
            if assigns and self.is_device(node.value):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    self.names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}


def _shown(tree: ast.Module) -> list[ast.AST]:
    """What a cell shows: print/display arguments, expect's statement, f-strings, the last bare expression."""
    shown: list[ast.AST] = []
    for call in _calls(tree, SHOWING_CALLS):
        shown += [*call.args, *(kw.value for kw in call.keywords)]
    for call in _calls(tree, {"expect"}):
        shown += call.args[:1]
    shown += [n for n in ast.walk(tree) if isinstance(n, ast.JoinedStr)]
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = tree.body[-1].value
        if not (isinstance(last, ast.Call) and _call_name(last) in SHOWING_CALLS | {"expect"}):
            shown.append(last)
    return shown


def _device_branches(tree: ast.Module, names: _DeviceNames) -> list[ast.AST]:
    """``if``s and conditional expressions whose test is a device expression and whose branches print."""
    found = []
    for node in ast.walk(tree):
        device_test = isinstance(node, (ast.If, ast.IfExp)) and names.is_device(node.test)
        if device_test and _calls(node, SHOWING_CALLS | {"expect"}):
            found.append(node)
    return found


def device_dependent_outputs(nb: dict[str, Any], name: str = "notebook") -> list[Offence]:
    """Rule 3: compared cells whose shown output may differ between a CPU, a GPU and a Mac."""
    names = _DeviceNames()
    found = []
    for i, cell in _code_cells(nb):
        tree = _parse(_source(cell))
        if tree is None:
            if _compared(cell):
                found.append(Offence(name, i, _first_line(cell), "source does not parse; cannot check it"))
            continue
        names.learn(tree)  # this cell's assignments count in it and in every later cell
        if _compared(cell):
            why = []
            printing = sorted({_call_name(c) for c in _calls(tree, PRINTING_DEVICE_CALLS)})
            if printing:
                why.append(f"calls {', '.join(p + '()' for p in printing)}, which prints what the machine has")
            shown = sorted({ast.unparse(n)[:60] for n in _shown(tree) if names.is_device(n)})
            if shown:
                why.append(f"shows a device expression: {'; '.join(shown)}")
            branches = _device_branches(tree, names)
            if branches:
                tests = sorted({ast.unparse(b.test)[:60] for b in branches})
                why.append(f"prints under a device test: {'; '.join(tests)}")
            if why:
                found.append(Offence(name, i, _first_line(cell), " and ".join(why)))
    return found


# --------------------------------------------------------------------------- rule 4


def ignored_claims(nb: dict[str, Any], name: str = "notebook") -> list[Offence]:
    """Rule 4: cells that call ``expect(`` but whose output nbval does not compare."""
    return [
        Offence(name, i, _first_line(c), f"calls expect( but is tagged {sorted({IGNORED, SKIPPED} & set(_tags(c)))}")
        for i, c in _code_cells(nb)
        if "expect(" in _source(c) and not _compared(c)
    ]


RULES = {
    "failed claims": committed_failed_claims,
    "ignored outputs without a claim": unclaimed_ignored_outputs,
    "device-dependent compared outputs": device_dependent_outputs,
    "claims nbval does not compare": ignored_claims,
}


# --------------------------------------------------------------------------- synthetic notebooks


def _cell(source: str, *tags: str, out: str | None = None) -> dict[str, Any]:
    outputs = [] if out is None else [{"output_type": "stream", "name": "stdout", "text": out}]
    return {"cell_type": "code", "source": source, "metadata": {"tags": list(tags)}, "outputs": outputs}


def _md(text: str = "Some words.") -> dict[str, Any]:
    return {"cell_type": "markdown", "source": text, "metadata": {}}


def _nb(*cells: dict[str, Any]) -> dict[str, Any]:
    return {"cells": list(cells), "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


# (rule, notebook, offending cell indices)
CASES = [
    # rule 1
    ("failed claims", _nb(_cell("expect('a', 1 > 0)", out="a: yes\n")), []),
    ("failed claims", _nb(_md(), _cell("expect('acc >= 80%', acc >= 0.8)", out="acc >= 80%: NO\n")), [1]),
    ("failed claims", _nb(_cell("print(1)", out="loss: NOT\nno claim: NO here\n")), []),
    # rule 2
    ("ignored outputs without a claim", _nb(_cell("print(acc)", IGNORED), _md(), _cell("expect('x', acc > 0)")), []),
    (
        "ignored outputs without a claim",
        _nb(_cell("print(acc)", IGNORED), _cell("y = 1"), _cell("z = 2"), _cell("expect('x', acc > 0)")),
        [0],
    ),
    ("ignored outputs without a claim", _nb(_cell("# shown, not claimed: a timing\nprint(seconds)", IGNORED)), []),
    ("ignored outputs without a claim", _nb(_cell("# shown: a timing\nprint(seconds)", IGNORED)), [0]),
    ("ignored outputs without a claim", _nb(_cell("expect('x', True)\nprint(acc)", IGNORED)), [0]),
    # rule 3
    ("device-dependent compared outputs", _nb(_cell("info = setup(0)", IGNORED), _cell("print(len(x))")), []),
    ("device-dependent compared outputs", _nb(_cell("info = setup(0)")), [0]),
    ("device-dependent compared outputs", _nb(_cell("print(torch.cuda.is_available())")), [0]),
    ("device-dependent compared outputs", _nb(_cell("print(torch.cuda.is_available())", IGNORED)), []),
    ("device-dependent compared outputs", _nb(_cell("print(f'on {info[\"device\"]}')")), [0]),
    (
        "device-dependent compared outputs",
        _nb(_cell("model = load_model(MODEL, device=DEVICE)\nprint(model.config)")),
        [],
    ),
    ("device-dependent compared outputs", _nb(_cell("model.device")), [0]),
    (
        "device-dependent compared outputs",
        _nb(_cell("device = resolve_device(DEVICE)", IGNORED), _md(), _cell("x = 1\nprint(f'{device.type}')")),
        [2],
    ),
    (
        "device-dependent compared outputs",
        _nb(
            _cell("ON_GPU = torch.cuda.is_available()"),
            _cell("if ON_GPU:\n    print('fast')\nelse:\n    print('slow')"),
        ),
        [1],
    ),
    ("device-dependent compared outputs", _nb(_cell("if requires_cuda('memory'):\n    run()")), [0]),
    ("device-dependent compared outputs", _nb(_cell("%time x = 1\nprint(x)")), []),
    ("device-dependent compared outputs", _nb(_cell("print(json.dumps(report))")), []),
    (
        "device-dependent compared outputs",
        _nb(_cell("device = resolve_device(DEVICE)\nprint(f'({device.type})')")),
        [0],
    ),
    ("device-dependent compared outputs", _nb(_cell("def f(:\n    pass")), [0]),
    ("device-dependent compared outputs", _nb(_cell("expect(f'merged on {DEVICE} matches', ok)")), [0]),
    # rule 4
    ("claims nbval does not compare", _nb(_cell("expect('x', True)")), []),
    ("claims nbval does not compare", _nb(_md(), _cell("expect('x', True)", IGNORED)), [1]),
    ("claims nbval does not compare", _nb(_cell("expect('x', True)", SKIPPED)), [0]),
]


@pytest.mark.parametrize("rule, nb, offenders", CASES)
def test_rule_on_synthetic_notebook(rule: str, nb: dict[str, Any], offenders: list[int]) -> None:
    assert [o.cell for o in RULES[rule](nb, "synthetic")] == offenders


def test_offences_name_the_notebook_cell_and_first_line() -> None:
    (offence,) = unclaimed_ignored_outputs(_nb(_md(), _cell("\n# train\nrun()", IGNORED)), "01_x.ipynb")
    assert str(offence).startswith("01_x.ipynb cell 1 `# train`: output ignored by nbval")


# --------------------------------------------------------------------------- the course's notebooks


def test_there_are_notebooks_to_check() -> None:
    assert len(NOTEBOOKS) >= 7, NOTEBOOKS


@pytest.mark.parametrize("rule", list(RULES))
def test_course_notebooks_follow_the_rule(rule: str) -> None:
    offences = [o for path in NOTEBOOKS for o in RULES[rule](json.loads(path.read_text()), path.name)]
    assert not offences, f"{len(offences)} cell(s) break the rule ({rule}):\n" + "\n".join(map(str, offences))
