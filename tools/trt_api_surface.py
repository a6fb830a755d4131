"""Every TensorRT attribute, method and enum member edgecv uses, collected from the source, checked against a
given TensorRT.

    python tools/trt_api_surface.py --module tensorrt_lean            # import check (runtime API)
    python tools/trt_api_surface.py --bindings-so path/tensorrt.so    # names compiled into a bindings library
    python tools/trt_api_surface.py --module tensorrt --side builder  # full TensorRT (e.g. 8.6.0 on Python 3.10)

Collected by AST, so the list cannot drift from the code:
* chains rooted at the TensorRT module (``trt.BuilderFlag.INT8``, ``self.trt.LayerInformationFormat.JSON``);
* attributes of TensorRT objects, recognised by the variable they live in (``self.context.execute_async_v3``
  -> ``IExecutionContext.execute_async_v3``; ``config.set_memory_pool_limit`` -> ``IBuilderConfig...``).
Names that ``trt_compat`` guards with ``hasattr`` are optional: when missing they are reported as routed
around, not as failures. Any call removed in TensorRT 10 (``build_engine``, ``max_workspace_size``, ...)
fails the check wherever it appears in edgecv/.
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
                 "set_binding_shape", "get_binding_dtype", "build_cuda_engine", "set_optimization_profile_async"}
OBJECT_CLASSES = {"engine": "ICudaEngine", "context": "IExecutionContext", "runtime": "Runtime",
                  "builder": "Builder", "config": "IBuilderConfig", "network": "INetworkDefinition",
                  "parser": "OnnxParser", "profile": "IOptimizationProfile", "inspector": "EngineInspector"}
BUILDER_SIDE = {"Builder", "IBuilderConfig", "INetworkDefinition", "OnnxParser", "IOptimizationProfile",
                "IInt8EntropyCalibrator2", "BuilderFlag", "MemoryPoolType", "NetworkDefinitionCreationFlag",
                "DeviceType", "ITimingCache"}
TRT_DIR = ("runtime", "tensorrt")  # the modules that talk to TensorRT (edgecv/runtime/tensorrt/)


def _chain(node):
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return node, parts[::-1]


def _is_guard(test) -> bool:
    """A condition that asks whether this TensorRT has something: hasattr(...) or a trt_compat has_*()."""
    for n in ast.walk(test):
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and (
                n.func.id == "hasattr" or n.func.id.startswith("has_")):
            return True
    return False


def _guarded_nodes(tree):
    """Nodes inside ``if <guard>:`` bodies, or after an ``if not <guard>: raise/return`` in the same block."""
    out = set()

    def mark(stmts):
        for st in stmts:
            out.update(id(n) for n in ast.walk(st))

    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "hasattr":
            mark(node.args)  # the check itself is not a use
        if isinstance(node, ast.If) and _is_guard(node.test):
            mark(node.body)
            mark(node.orelse)
        for field in ("body", "orelse", "finalbody"):
            block = getattr(node, field, None)
            if not isinstance(block, list):
                continue
            for i, st in enumerate(block):
                if isinstance(st, ast.If) and _is_guard(st.test) and st.body and \
                        isinstance(st.body[-1], (ast.Raise, ast.Return)):
                    mark(block[i + 1:])
    return out


def collect(paths):
    """Returns (names {dotted: [where]}, removed {call: [where]}, guarded {dotted}).

    A name is guarded (optional, routed around) when every use of it sits behind a capability check.
    """
    names, removed, unguarded_use = {}, {}, set()
    for p in paths:
        p = Path(p)
        rel = str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)
        tree = ast.parse(p.read_text(), str(p))
        guarded_ids = _guarded_nodes(tree)
        in_trt_file = tuple(p.parts[-3:-1]) == TRT_DIR
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            if node.attr in REMOVED_IN_10:
                removed.setdefault(node.attr, []).append(f"{rel}:{node.lineno}")
            base, parts = _chain(node)
            if isinstance(base, ast.Name) and base.id == "self" and parts[:1] == ["trt"]:
                parts = parts[1:]
            elif isinstance(base, ast.Name) and base.id == "trt":
                pass
            elif in_trt_file and isinstance(base, ast.Name) and (base.id in OBJECT_CLASSES or (
                    base.id == "self" and len(parts) > 1 and parts[0] in OBJECT_CLASSES)):
                var = parts.pop(0) if base.id == "self" else base.id
                parts = [OBJECT_CLASSES[var]] + parts[:1]
            else:
                continue
            parts = [x for x in parts if not x.startswith("__")]
            if parts:
                name = ".".join(parts)
                names.setdefault(name, []).append(f"{rel}:{node.lineno}")
                if id(node) not in guarded_ids:
                    unguarded_use.add(name)
    keep = {n: w for n, w in names.items() if not any(o.startswith(n + ".") for o in names)}
    guarded = {n for n in keep if n not in unguarded_use}
    return keep, removed, guarded


def side_of(name):
    return "builder" if name.split(".")[0] in BUILDER_SIDE else "runtime"


def check_import(names, module):
    """{name: True/False} by attribute lookup on the imported module; None when it does not import."""
    try:
        trt = importlib.import_module(module)
    except Exception as e:
        return None, f"{module} does not import: {type(e).__name__}: {e}", None
    out = {}
    so = next(iter(Path(trt.__file__).parent.parent.glob("*bindings*/*.so")), None) or \
        next(iter(Path(trt.__file__).parent.glob("*.so")), None)
    blob = so.read_bytes() if so else b""
    for n in names:
        obj, ok = trt, True
        for part in n.split("."):
            if not hasattr(obj, part):
                ok = False
                break
            obj = getattr(obj, part)
        # Classes the package does not export at module level (EngineInspector) fall back to the bindings' names.
        if not ok and not hasattr(trt, n.split(".")[0]) and blob:
            ok = _in_library(n, blob)
        out[n] = ok
    return out, getattr(trt, "__version__", "?"), "import"


def check_bindings_so(names, so_path):
    """Weaker: each name component must appear as a C string in the compiled bindings library."""
    blob = Path(so_path).read_bytes()
    return {n: _in_library(n, blob) for n in names}, str(so_path), "names-in-library"


def _in_library(name, blob):
    # The linker merges a string literal into the tail of a longer one ("DLA" inside "...DLA\0"), so only the
    # terminating NUL is required: a weaker check than import, as documented.
    return all(p.encode() + b"\0" in blob for p in name.split("."))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--module", default=None, help="import check against this module (tensorrt, tensorrt_lean)")
    ap.add_argument("--bindings-so", default=None, help="name check against a bindings library (tensorrt.so)")
    ap.add_argument("--side", choices=["runtime", "builder", "all"], default="all")
    ap.add_argument("--paths", nargs="*", default=None)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    paths = a.paths or sorted(str(p) for p in (ROOT / "edgecv").rglob("*.py"))
    names, removed, guarded = collect(paths)
    selected = sorted(n for n in names if a.side == "all" or side_of(n) == a.side)
    present, version, kind = (None, "not checked", None)
    if a.bindings_so:
        present, version, kind = check_bindings_so(selected, a.bindings_so)
    elif a.module:
        present, version, kind = check_import(selected, a.module)
    missing = [n for n in selected if present is not None and not present[n]]
    routed = [n for n in missing if n in guarded]
    failing = [n for n in missing if n not in guarded]
    result = {"version": version, "check": kind, "side": a.side, "names": len(selected), "routed_around": routed,
              "missing": {n: names[n] for n in failing}, "removed_in_trt10_used": removed}
    if a.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"TensorRT API surface ({a.side} side, {len(selected)} names) vs {version} [{kind or 'no check'}]")
        print(f"  routed around by trt_compat: {', '.join(routed) or 'none'}")
        print(f"  missing: {', '.join(failing) or 'none'}")
        print(f"  calls removed in TensorRT 10: {removed or 'none'}")
    return 1 if removed or failing else 0


if __name__ == "__main__":
    sys.exit(main())
