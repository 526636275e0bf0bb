"""What this machine's platform supports, said in one sentence a learner can act on.

Today one question: can the course's 4-bit and 8-bit cells (bitsandbytes) run here? pyproject.toml
does not install bitsandbytes on macOS, and an install can fail to import (a CUDA/torch mismatch).
``course-utils doctor`` runs a full 4-bit round trip; this is the quick check a notebook cell uses
to decide whether to run or skip.

>>> ok, why = bitsandbytes_available()
>>> isinstance(ok, bool) and why.startswith("bitsandbytes")
True
"""

from __future__ import annotations

import importlib
import importlib.util
import platform

__all__ = ["bitsandbytes_available"]

_SKIPPED = "the course's 4-bit and 8-bit cells are skipped"


def bitsandbytes_available() -> tuple[bool, str]:
    """``(True, why)`` when bitsandbytes imports here, else ``(False, why not)`` in one sentence.

    macOS: not installed by the course (no macOS build that the course's versions support);
    not installed elsewhere: says how to install; installed but failing to import: the error's first
    line. Importing bitsandbytes takes a few seconds the first time.

    >>> bitsandbytes_available()[1].endswith(".")
    True
    """
    if platform.system() == "Darwin":
        return False, f"bitsandbytes is not installed on macOS: {_SKIPPED} (run them on Colab or a CUDA machine)."
    if importlib.util.find_spec("bitsandbytes") is None:
        return False, f"bitsandbytes is not installed: {_SKIPPED}; `pip install bitsandbytes` to run them."
    try:
        module = importlib.import_module("bitsandbytes")
    except Exception as err:  # a CUDA/torch mismatch raises RuntimeError, OSError, ImportError...
        first = (str(err).splitlines() or [""])[0][:160]
        return False, (
            f"bitsandbytes is installed but does not import ({type(err).__name__}: {first}): {_SKIPPED}; "
            "reinstall it to match torch (`pip install -U bitsandbytes`)."
        )
    version = getattr(module, "__version__", "?")
    return True, f"bitsandbytes {version} imports: the course's 4-bit and 8-bit cells run here."
