"""Tables: one helper that writes them as HTML (for ``_repr_html_``) and as aligned text (for print).

- :func:`html_table`: ``<table>`` with a header row; every cell escaped unless it is :class:`Html`;
  numbers aligned right.
- :func:`text_table`: the same table as aligned plain text.
- :func:`show_table`: HTML in Jupyter, aligned text elsewhere (a script, a terminal, nbval's text
  output); what a notebook uses instead of a hand-aligned ``print`` table.

>>> print(text_table(["recipe", "peak GiB"], [["lora", 3.5], ["qlora", 1.25]]))
recipe  peak GiB
------  --------
lora         3.5
qlora       1.25
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["Html", "html_table", "show_table", "text_table"]


class Html(str):
    """A cell that is already HTML (a coloured verdict, a tick mark): :func:`html_table` does not escape it.

    >>> html_table(["ok"], [[Html("<b>yes</b>")]])
    '<table><tr><th>ok</th></tr><tr><td><b>yes</b></td></tr></table>'
    """


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _rows(rows: Iterable[Sequence[Any]], width: int) -> list[list[Any]]:
    out = [list(r) for r in rows]
    for i, r in enumerate(out):
        if len(r) != width:
            raise ValueError(f"Row {i} has {len(r)} cells but there are {width} headers: {r!r}.")
    return out


def html_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, align: Sequence[str] | None = None) -> str:
    """An HTML ``<table>``: one header row, then ``rows``; text escaped, numbers right-aligned.

    ``align`` gives each column ``"left"``, ``"right"`` or ``"center"`` (default: right for int/float
    cells, left for the rest, which is also how pre-formatted numbers such as ``"1.50"`` stay put).

    >>> html_table(["part", "MiB"], [["weights <fp32>", 1.5]])
    "<table><tr><th>part</th><th>MiB</th></tr><tr><td>weights &lt;fp32&gt;</td><td style='text-align:right'>1.5</td></tr></table>"
    """
    body = _rows(rows, len(headers))
    if align is not None and len(align) != len(headers):
        raise ValueError(f"align has {len(align)} entries but there are {len(headers)} headers.")
    head = "".join(f"<th>{c if isinstance(c, Html) else html.escape(str(c))}</th>" for c in headers)

    def cell(value: Any, column: int) -> str:
        side = align[column] if align is not None else ("right" if _is_number(value) else "left")
        text = value if isinstance(value, Html) else html.escape(str(value))
        return f"<td>{text}</td>" if side == "left" else f"<td style='text-align:{side}'>{text}</td>"

    lines = "".join("<tr>" + "".join(cell(v, i) for i, v in enumerate(r)) + "</tr>" for r in body)
    return f"<table><tr>{head}</tr>{lines}</table>"


def text_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """The table as aligned text: columns as wide as their widest cell, numbers right-aligned.

    >>> print(text_table(["a", "b"], [["x", 1], ["yy", 22]]))
    a    b
    --  --
    x    1
    yy  22
    """
    body = _rows(rows, len(headers))
    cells = [[str(c) for c in headers]] + [[str(v) for v in r] for r in body]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [bool(body) and all(_is_number(r[i]) for r in body) for i in range(len(headers))]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths), *(line(r) for r in cells[1:])])


def _in_jupyter() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def show_table(rows: Iterable[Sequence[Any]], headers: Sequence[str]) -> None:
    """Show a table: HTML in a Jupyter notebook, aligned text anywhere else.

    >>> show_table([["lora", 3.5]], ["recipe", "peak GiB"])
    recipe  peak GiB
    ------  --------
    lora         3.5
    """
    rows = [list(r) for r in rows]
    if _in_jupyter():
        from IPython.display import display

        # both forms: the notebook shows the HTML, nbval and text exports compare the aligned text
        display({"text/html": html_table(headers, rows), "text/plain": text_table(headers, rows)}, raw=True)
    else:
        print(text_table(headers, rows))
