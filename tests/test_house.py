"""The house rules that keep edgecv readable, checked on its source: no function over 60 lines, none with more than
8 parameters (click commands excepted: their options map to one typed options object), and the import layers
(``lint-imports`` checks the contracts in pyproject.toml; this test runs it too, where it is installed)."""
import ast
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES, MAX_PARAMS = 60, 8


def _functions():
    for path in sorted((ROOT / "edgecv").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path.relative_to(ROOT), node


def _is_click_command(node) -> bool:
    def name(d):
        d = d.func if isinstance(d, ast.Call) else d
        return ast.unparse(d)

    return any(name(d).endswith((".command", ".group")) or name(d) in ("click.command", "click.group")
               for d in node.decorator_list)


def _params(node) -> int:
    a = node.args
    names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
    n = len(names) - (1 if names and names[0] in ("self", "cls") else 0)
    return n + (a.vararg is not None) + (a.kwarg is not None)


def test_no_function_over_60_lines():
    long = [f"{p}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)" for p, n in _functions()
            if n.end_lineno - n.lineno + 1 > MAX_LINES]
    assert not long, "\n".join(long)


def test_no_function_with_more_than_8_parameters_outside_click_commands():
    many = [f"{p}:{n.lineno} {n.name} ({_params(n)} parameters)" for p, n in _functions()
            if _params(n) > MAX_PARAMS and not _is_click_command(n)]
    assert not many, "\n".join(many)


def test_the_checks_catch_what_they_look_for(tmp_path):
    """The two rules on a deliberately bad function (so neither check can pass by looking at nothing)."""
    src = "def f(a, b, c, d, e, f, g, h, i):\n" + "    x = 1\n" * 61
    node = ast.parse(src).body[0]
    assert _params(node) == 9 and node.end_lineno - node.lineno + 1 == 62
    assert sum(1 for _ in _functions()) > 500


def test_import_contracts_hold():
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.skip("import-linter is not installed (.ci/run installs it and runs lint-imports itself)")
    r = subprocess.run([exe, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
