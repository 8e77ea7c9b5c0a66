"""Files written whole: the one atomic writer of the kit.

The text goes to a `.partial` sibling, which is then renamed over the target, so that a
crash (a killed kernel, a full disk) leaves the old file or the new one, never half of
one. Readers pass over `.partial` files (run_folder.copy_evaluation ignores them).
"""

from __future__ import annotations

from pathlib import Path

PARTIAL = ".partial"


def write_atomically(path: str | Path, text: str) -> Path:
    """`text` into `path` (its folder made if missing), whole or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + PARTIAL)
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)
    return path
