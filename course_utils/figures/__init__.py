"""Figures of the course's ideas, drawn with matplotlib: one module per chapter.

Each function returns a ``matplotlib.figure.Figure`` and draws an idea, not a result: LoRA's
``W + (alpha/r) B A`` with its shapes, adapters on one base, merge drift by dtype, DPO's policy
and reference, virtual tokens, NF4 blocks, what each GPU keeps. Deterministic: no data, no
randomness, so a figure is the same on every machine.
"""
