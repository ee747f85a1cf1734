"""Print constraints.txt for the packages dermalens names itself, at the versions installed now.

    .venv/bin/python scripts/write_constraints.py > constraints.new && mv constraints.new constraints.txt

Run it after an upgrade that passes `make test`. The comment block at the top of the current
constraints.txt is kept; only the direct dependencies of pyproject.toml (and its extras) are pinned.
"""
from __future__ import annotations

import re
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:   # Python 3.10: the same parser as a package
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def direct_dependencies(pyproject: dict) -> list[str]:
    project = pyproject["project"]
    requirements = list(project["dependencies"])
    for items in project.get("optional-dependencies", {}).values():
        requirements += [item for item in items if not item.startswith(project["name"])]
    return sorted({re.split(r"[<>=!~\[ ;]", item, maxsplit=1)[0].lower() for item in requirements})


def main() -> int:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    current = ROOT / "constraints.txt"
    header = [line for line in current.read_text().splitlines() if line.startswith("#")] if current.is_file() else []
    lines, missing = list(header), []
    for name in direct_dependencies(pyproject):
        try:
            lines.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            missing.append(name)
    if missing:
        print(f"not installed, so not pinned: {', '.join(missing)} (install dermalens[all] first)", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
