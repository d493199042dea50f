"""The README's Layout section matches the tree: every folder it names exists, and every module of the
package is named in its folder's entry."""

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent


def layout_entries() -> dict[str, str]:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Layout", 1)[1].split("```")[1]
    entries: dict[str, str] = {}
    folder = None
    for line in block.splitlines():
        if line and not line[0].isspace():
            folder, _, text = line.partition(" ")
            entries[folder] = text
        elif folder:
            entries[folder] += " " + line.strip()
    return entries


def test_layout_names_existing_folders_and_every_module():
    entries = layout_entries()
    assert [f for f in entries if not (ROOT / f).is_dir()] == []
    missing = []
    for path in sorted((ROOT / "workbench").rglob("*.py")):
        if path.name in ("__init__.py", "__main__.py"):
            continue
        folder = path.parent.relative_to(ROOT).as_posix() + "/"
        if not re.search(rf"\b{re.escape(path.stem)}\b", entries.get(folder, "")):
            missing.append(path.relative_to(ROOT).as_posix())
    assert missing == [], "modules the README's Layout section does not name"
