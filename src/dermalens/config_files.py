"""Config files by path or by the name of a shipped config, with the command line's data options on top."""
from __future__ import annotations

import difflib
from pathlib import Path

from .config import ConfigError, load_config

# Shipped with the package (package data), so config names work from a wheel too.
CONFIGS_DIR = Path(__file__).resolve().parent / "configs"


class UnknownConfigName(ConfigError):
    """Neither a config file nor the name of a shipped config."""


def shipped_config_names() -> list[str]:
    return sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml"))


def resolve_config_path(name: str | None) -> Path | None:
    """A config path, or a bare name of a shipped config (dermalens/configs/)."""
    if name is None:
        return None
    path = Path(name)
    if path.is_file():
        return path
    candidate = CONFIGS_DIR / (name if name.endswith(".yaml") else f"{name}.yaml")
    if candidate.is_file():
        return candidate
    if path.is_dir():   # load_config names it: a folder, not a missing file
        return path
    known = shipped_config_names()
    close = difflib.get_close_matches(Path(name).stem, known, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise UnknownConfigName(f"config not found: {name} (no such file, and not a shipped config name).{hint} "
                            f"Shipped configs: {', '.join(known)}")


def load_named_config(name: str | None, overrides: list[str] | None = None, *, data: str | None = None,
                      data_format: str | None = None) -> dict:
    """The config `name` (file or shipped name; None: the defaults) with `overrides`, then --data/--format."""
    # As given, not read as YAML: a folder named "scans #2", "2024" or "null" is a folder name.
    given = {key: str(value) for key, value in (("path", data), ("format", data_format)) if value}
    return load_config(resolve_config_path(name), overrides, {"data": given} if given else None)
