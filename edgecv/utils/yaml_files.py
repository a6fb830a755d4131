"""YAML files read strictly: errors name the file, the line and the column, in one line."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict

import yaml

from edgecv.errors import RecipeError
from edgecv.utils.io import NotASmallFile, read_small, relative_hint

# A recipe, a calibration set or a camera list holds hundreds of values; aliases (&a ... *a) can make a few lines
# stand for billions (the "billion laughs"), which edgecv's copies and dumps would then build in memory.
MAX_YAML_VALUES = 100_000



class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading ``1e-3`` as a float as YAML 1.2 does: YAML 1.1 wants a dot (``1.0e-3``) and
    reads ``lr: 1e-3``, as every other ML config writes it, as the string '1e-3'."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                              re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
                              list("-+0123456789."))


def safe_load_bounded(text: str, where: str) -> Any:
    """``yaml.safe_load`` of ``text``, refusing (naming ``where``) a document nested too deeply, one that refers to
    itself, or one whose aliases expand it past MAX_YAML_VALUES values; YAML errors propagate for the caller to
    word."""
    try:
        raw = yaml.load(text, Loader=_Loader)
        _expanded_size(raw, {}, set(), where)
    except RecursionError:  # "[[[[...": PyYAML's parser and the size count both recurse
        raise RecipeError(f"{where}: the YAML is nested too deeply to be an edgecv file") from None
    return raw


def _expanded_size(node: Any, done: Dict[int, int], open_: set, where: str) -> int:
    """How many values ``node`` stands for once every alias is copied out (shared parts counted once per use)."""
    if not isinstance(node, (dict, list)):
        return 1
    key = id(node)
    if key in done:
        return done[key]
    if key in open_:
        raise RecipeError(f"{where}: the YAML refers to itself through an alias (&/*)")
    open_.add(key)
    children = [*node.keys(), *node.values()] if isinstance(node, dict) else node
    total = 1
    for child in children:
        total += _expanded_size(child, done, open_, where)
        if total > MAX_YAML_VALUES:
            raise RecipeError(f"{where}: the YAML's aliases (&/*) expand it past {MAX_YAML_VALUES:,} values; "
                              "write the values out")
    open_.discard(key)
    done[key] = total
    return total


def yaml_where(e: Exception) -> str:
    """``:line:column`` of a YAML error (1-based), or nothing."""
    mark = getattr(e, "problem_mark", None)
    return f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""


def yaml_problem(e: Exception) -> str:
    """A YAML error as one line (PyYAML's own message spans several, with a source excerpt)."""
    parts = [getattr(e, "context", None), getattr(e, "problem", None)]
    text = "; ".join(p for p in parts if p) or str(e).splitlines()[0]
    return " ".join(text.split())


def read_yaml_mapping(path: Path, what: str) -> Dict[str, Any]:
    """The top-level mapping of a YAML file; errors name the file."""
    if not path.exists():
        raise RecipeError(f"{path}: {what} file not found{relative_hint(path)}")
    try:
        text = read_small(path).decode("utf-8")
    except UnicodeDecodeError:
        raise RecipeError(f"{path}: not a {what} (not UTF-8 text; expected YAML)") from None
    except NotASmallFile as e:
        raise RecipeError(f"{path}: not a {what} file ({e})") from None
    except OSError as e:
        raise RecipeError(f"{path}: cannot read ({e.strerror})") from None
    if not text.strip():
        raise RecipeError(f"{path}: the {what} is empty (expected a YAML mapping, e.g. 'model: {{name: ...}}')")
    try:
        raw = safe_load_bounded(text, str(path))
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}{yaml_where(e)}: not valid YAML ({yaml_problem(e)})") from None
    if raw is None:
        raise RecipeError(f"{path}: the {what} is empty (only comments)")
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: expected a mapping at the top level")
    return raw
