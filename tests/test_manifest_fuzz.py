"""Manifest fuzzer: an attacker edits ``manifest.json``, re-checksums every file and the manifest itself (anyone
can: it has no key), then runs ``check`` and ``eval``. Each mutant must be refused cleanly or accepted: never a
crash, never a read outside the bundle. Reads are watched with a Python audit hook on ``open``; the secret's
bytes must never reach the output either."""
import copy
import json
import os
import random
import shutil
import sys

import pytest
from click.testing import CliRunner
from conftest import FASHION

from edgecv.bundle.manifest import manifest_bytes
from edgecv.utils.io import sha256_file

WATCHED: set = set()
OPENED: list = []


def _audit(event, args):
    if event == "open" and WATCHED and args and isinstance(args[0], (str, bytes, os.PathLike)):
        try:
            p = os.path.realpath(os.fsdecode(args[0]))
        except (TypeError, ValueError):
            return
        if p in WATCHED:
            OPENED.append(p)


sys.addaudithook(_audit)


def cli():
    from edgecv.cli import cli as group

    return group


PATH_KEYS = ["labels", "preprocess", "calibration_cache", "artifacts.0.file", "artifacts.2.file", "default.onnxruntime.file",
             "default.tensorrt.file", "files"]


def evil_names(secret, bundle):
    rel = os.path.relpath(secret, bundle)
    return [rel, str(secret), f"sub/../{rel}", "./labels.txt", "", "labels.txt/", "a//b", "..\\secret.txt",
            "C:/secret.txt", "link.txt", "linkdir/labels.txt", "unlisted.onnx", "labels.txt\x00.png", "x" * 5000,
            "manifest.json", "model_fp32.onnx/../labels.txt", 5, None, [], {"a": 1}, True]


def set_key(m, dotted, value):
    parts = dotted.split("|") if "|" in dotted else dotted.split(".")
    node = m
    for p in parts[:-1]:
        node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
    last = parts[-1]
    if last == "files":  # add the evil name to the checksummed list
        if isinstance(value, str):
            node["files"][value] = {"sha256": "0" * 64, "size": 0}
            m["labels"] = value
        else:
            node["files"] = value
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


VALUE_MUTATIONS = [
    ("format_version", 2), ("format_version", "1"), ("artifacts", []), ("artifacts", {}), ("artifacts", [5]),
    ("artifacts.0.target", None), ("artifacts.0.precision", 8), ("default", []), ("default.onnxruntime", "x"),
    ("default.onnxruntime.file", "model_int8_trt.onnx"), ("inputs", []), ("inputs", [{"name": "x", "shape": [-5]}]),
    ("inputs", [{"name": "input", "shape": ["N", 3, 28, 28]}]), ("outputs", [{"name": "logits", "shape": [1, 7]}]),
    ("model", 3), ("model", {"num_classes": 3}), ("files|labels.txt|size", -1), ("files|labels.txt|size", True),
    ("files|labels.txt|sha256", "abc"), ("files|labels.txt", "x"), ("manifest_sha256", None), ("files", []),
]


def mutate_and_sign(bundle, secret, rng):
    m = json.loads((bundle / "manifest.json").read_text())
    os.symlink(secret, bundle / "link.txt")
    (bundle / "linkdir").symlink_to(secret.parent)
    shutil.copy(bundle / "model_fp32.onnx", bundle / "unlisted.onnx")
    kind = rng.random()
    if kind < 0.6:
        key, value = rng.choice(PATH_KEYS), rng.choice(evil_names(secret, bundle))
        set_key(m, key, value)
        desc = f"{key}={value!r:.60}"
    else:
        key, value = rng.choice(VALUE_MUTATIONS)
        try:
            set_key(m, key, copy.deepcopy(value))
        except (TypeError, KeyError, IndexError, AttributeError):
            pass
        desc = f"{key}={value!r:.60}"
    if isinstance(m.get("files"), dict):  # the attacker re-checksums whatever exists
        for name, info in m["files"].items():
            p = bundle / name if isinstance(name, str) and "\x00" not in name else None
            try:
                if p is not None and p.is_file() and isinstance(info, dict):
                    info["sha256"], info["size"] = sha256_file(p), p.stat().st_size
            except OSError:
                pass
    (bundle / "manifest.json").write_bytes(manifest_bytes(m))
    return desc


@pytest.mark.parametrize("seed", range(60))
def test_mutated_manifest_is_refused_or_accepted_never_crashes_or_escapes(seed, tiny_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET-7f3a\n" * 10)
    desc = mutate_and_sign(bundle, secret, random.Random(seed))
    WATCHED.clear()
    WATCHED.add(os.path.realpath(secret))
    OPENED.clear()
    try:
        runner = CliRunner()
        for args in (["check", str(bundle)], ["eval", str(bundle), "--data", str(FASHION), "--limit", "20", "--json"],
                     ["bench", str(bundle), "--iters", "2", "--warmup", "0", "--json"]):
            r = runner.invoke(cli(), args)
            assert r.exception is None or isinstance(r.exception, SystemExit), (desc, args, r.exception)
            assert r.exit_code in (0, 1, 2), (desc, args, r.output)
            assert "SECRET" not in r.output, (desc, args)
            assert "Traceback" not in r.output
            if r.exit_code:
                assert r.output.strip().splitlines()[-1].startswith("error:"), (desc, args, r.output)
    finally:
        WATCHED.clear()
    assert OPENED == [], (desc, OPENED)


def test_symlinked_labels_are_refused_naming_the_link(tiny_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    (bundle / "labels.txt").unlink()
    (bundle / "labels.txt").symlink_to("/etc/passwd")
    m = json.loads((bundle / "manifest.json").read_text())
    m["files"]["labels.txt"] = {"sha256": sha256_file("/etc/passwd"), "size": os.path.getsize("/etc/passwd")}
    (bundle / "manifest.json").write_bytes(manifest_bytes(m))
    r = CliRunner().invoke(cli(), ["eval", str(bundle), "--data", str(FASHION), "--limit", "5"])
    assert r.exit_code == 2 and "labels.txt: is a symbolic link" in r.output and "root:" not in r.output


def test_a_manifest_nested_too_deeply_is_refused_by_name(tiny_bundle, tmp_path):
    """'[[[[...' 100,000 deep raised RecursionError in json (an internal error from check, bench, run, install)."""
    from edgecv.bundle.manifest import listed_files
    from edgecv.bundle.reader import open_bundle
    from edgecv.errors import BundleError

    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    deep = ('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}").encode()
    (b / "manifest.json").write_bytes(deep)
    with pytest.raises(BundleError, match=r"manifest.json: nested too deeply to be an edgecv file"):
        open_bundle(b)
    assert listed_files(deep) is None  # the output rules treat it as a damaged bundle
