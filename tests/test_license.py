"""The LICENSE file: the full Apache-2.0 text that pyproject.toml declares, with the course's copyright line."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# md5 of https://www.apache.org/licenses/LICENSE-2.0.txt, the text below the copyright line, unchanged
APACHE_2_MD5 = "3b83ef96387f14655fc854ddc3c6bd57"


def test_license_is_the_full_apache_2_text_that_pyproject_declares():
    first, rest = (ROOT / "LICENSE").read_text().split("\n", 1)
    assert first == "Copyright 2026 the peft-course authors"
    assert hashlib.md5(rest.encode()).hexdigest() == APACHE_2_MD5
    assert "END OF TERMS AND CONDITIONS" in rest
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^license = "Apache-2.0"$', pyproject, flags=re.MULTILINE)
