"""Collect every TensorRT attribute the code uses (from the source, by AST) and check it against a TensorRT.

python tools/trt_api_surface.py [--module tensorrt|tensorrt_lean] [--json]
Names are gathered from attribute chains rooted at a variable bound to the TensorRT module (``trt``),
so the list cannot drift from the code. Without an importable TensorRT it still lists the names and
flags calls removed in TensorRT 10 (``build_engine``, ``max_workspace_size``, ...).
"""
import argparse
import ast
import importlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REMOVED_IN_10 = {"build_engine", "max_workspace_size", "max_batch_size", "execute_async_v2", "execute_v2",
                 "get_binding_index", "get_binding_shape", "binding_is_input", "num_bindings",
                 "set_binding_shape", "get_binding_dtype", "build_cuda_engine"}


def collect(paths):
    """{dotted name: [file:line, ...]} for chains like trt.BuilderFlag.INT8 and calls like x.build_engine()."""
    names, calls = {}, {}
    for p in paths:
        tree = ast.parse(Path(p).read_text(), str(p))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                chain, cur = [], node
                while isinstance(cur, ast.Attribute):
                    chain.append(cur.attr)
                    cur = cur.value
                rooted = (isinstance(cur, ast.Name) and cur.id == "trt") or (
                    chain and chain[-1] == "trt" and isinstance(cur, ast.Name))  # self.trt.X
                if rooted and chain[-1] == "trt" and not (isinstance(cur, ast.Name) and cur.id == "trt"):
                    chain = chain[:-1]
                if rooted and chain:
                    names.setdefault(".".join(reversed(chain)), []).append(f"{Path(p).relative_to(ROOT)}:{node.lineno}")
                if node.attr in REMOVED_IN_10:
                    calls.setdefault(node.attr, []).append(f"{Path(p).relative_to(ROOT)}:{node.lineno}")
    # Keep only the longest chains (trt.BuilderFlag.INT8 implies trt.BuilderFlag).
    keep = {n: w for n, w in names.items() if not any(o.startswith(n + ".") for o in names)}
    return keep, calls


def check(names, module):
    try:
        trt = importlib.import_module(module)
    except Exception as e:
        return None, f"{module} does not import: {e}"
    missing = {}
    for n in names:
        obj = trt
        for part in n.split("."):
            if not hasattr(obj, part):
                missing[n] = part
                break
            obj = getattr(obj, part)
    return missing, getattr(trt, "__version__", "?")


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--module", default="tensorrt")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--paths", nargs="*", default=None)
    a = ap.parse_args(argv)
    paths = a.paths or sorted(str(p) for p in (ROOT / "edgecv").rglob("*.py"))
    names, removed = collect(paths)
    missing, version = check(names, a.module)
    result = {"names": sorted(names), "removed_in_trt10_used": removed, "module": a.module, "version": version,
              "missing": missing}
    print(json.dumps(result, indent=2) if a.json else
          f"{len(names)} TensorRT names used; removed-in-10 calls: {removed or 'none'}; "
          f"{a.module} {version}: {'not checked' if missing is None else (missing or 'all present')}")
    return 1 if removed or missing else 0


if __name__ == "__main__":
    sys.exit(main())
