"""Regenerate the seed example files from the seed README (``../shared/SEED.md``).

Each Python block of the sections "Multi-User Broker Management - Complete Guide",
"Comprehensive Error Handling" and "Complete Testing Examples" becomes one numbered file,
unchanged except for the import root (``app.`` -> ``trading_backend.``).
``tests/test_seed_examples.py`` checks the committed files still match the seed.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

SECTIONS = (
    "Multi-User Broker Management - Complete Guide",
    "Comprehensive Error Handling",
    "Complete Testing Examples",
)
HERE = Path(__file__).parent


def blocks(seed: str) -> list[str]:
    found: list[str] = []
    parts = re.split(r"^## ", seed, flags=re.M)
    for part in parts:
        title = part.splitlines()[0] if part else ""
        if not any(s in title for s in SECTIONS):
            continue
        for code in re.findall(r"```python\n(.*?)```", part, flags=re.S):
            code = code.replace("from app.", "from trading_backend.")
            try:
                compile(code, "<seed>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            except SyntaxError:
                continue  # shell lines shown as python (``python quick_test.py``)
            found.append(code)
    return found


def main(seed_path: str) -> None:
    for old in HERE.glob("block_*.py"):
        old.unlink()
    for number, code in enumerate(blocks(Path(seed_path).read_text()), start=1):
        (HERE / f"block_{number:02d}.py").write_text(code)
        print(f"block_{number:02d}.py")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(HERE.parents[2] / "shared" / "SEED.md"))
