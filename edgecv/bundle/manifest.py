"""The manifest's schema and its self-checksum.

``manifest.json`` indexes every file of a bundle with its sha256 and size, the artefacts per target, the default
per target, the I/O specs, the release and compatibility fields, and the golden vectors with their fidelity
budget. It carries its own sha256 (computed with that value blanked), so any changed byte shows.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Dict, Optional

from edgecv.bundle.names import BUNDLE_NAMES, MANIFEST, SIGNATURE
from edgecv.errors import BundleError
from edgecv.metrics import Budget
from edgecv.utils.outputs import OutputKind

FORMAT_VERSION = 1
# The precisions an artefact (or a device's run of one) can have; bf16 is a CPU's run of the fp32 artefact.
PRECISIONS = ("int8", "bf16", "fp16", "fp32")
MAX_MANIFEST_BYTES = 16 << 20
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def strict_json(raw: bytes | str, where: str):
    """``json.loads`` that refuses NaN and Infinity (Python's json accepts them; no edgecv file holds one)."""
    def refuse(name):
        raise BundleError(f"{where}: {name} is not a number a bundle may hold")

    text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    try:
        return json.loads(text, parse_constant=refuse)
    except RecursionError:  # "[[[[...": no edgecv file nests more than a few levels
        raise BundleError(f"{where}: nested too deeply to be an edgecv file") from None


def check_member_name(name: Any, where: str) -> str:
    """``name`` if it is a plain relative path inside a bundle, else a BundleError naming ``where``."""
    if not isinstance(name, str) or not name:
        raise BundleError(f"{where}: expected a file name inside the bundle, got {name!r}")
    if name.startswith("/") or "\\" in name or "\x00" in name or re.match(r"^[A-Za-z]:", name):
        raise BundleError(f"{where}: {name!r} is not a relative path inside the bundle")
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise BundleError(f"{where}: {name!r} leaves or escapes the bundle (empty, '.' or '..' component)")
    return name


def manifest_digest(raw: bytes) -> Optional[str]:
    """sha256 of the manifest's bytes with its own hash value blanked to zeros (so any byte change shows)."""
    blanked, n = re.subn(rb'"manifest_sha256": "[0-9a-f]*"', b'"manifest_sha256": "' + b"0" * 64 + b'"', raw)
    return hashlib.sha256(blanked).hexdigest() if n == 1 else None


def manifest_bytes(manifest: Dict) -> bytes:
    """Serialise a manifest with its self-checksum filled in."""
    blank = b'"manifest_sha256": "' + b"0" * 64 + b'"'
    raw = (json.dumps(dict(manifest, manifest_sha256="0" * 64), indent=2) + "\n").encode()
    return raw.replace(blank, b'"manifest_sha256": "' + manifest_digest(raw).encode() + b'"')


def listed_files(raw: bytes) -> Optional[frozenset]:
    """The files an intact manifest (its self-checksum holds) lists, or None when it is damaged."""
    try:
        m = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(m, dict) or not isinstance(m.get("files"), dict) or manifest_digest(raw) != m.get(
            "manifest_sha256"):
        return None
    return frozenset(m["files"])


class _Checker:
    """The checks of one manifest, each naming the manifest and the key it found wrong."""

    def __init__(self, m: Dict, mpath: Path):
        self.m, self.mpath = m, mpath

    def fail(self, msg: str) -> BundleError:
        return BundleError(f"{self.mpath}: {msg}")

    def need(self, key: str, types):
        v = self.m.get(key)
        if not isinstance(v, types) or isinstance(v, bool):
            tn = "/".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
            raise self.fail(f"key {key!r}: expected {tn}, got {type(v).__name__}")
        return v

    def listed(self, value: Any, key: str) -> None:
        check_member_name(value, f"{self.mpath}: {key}")
        if value not in self.m["files"]:
            raise self.fail(f"{key}: {value!r} is not in the checksummed file list")

    def files(self) -> None:
        if self.m.get("format_version") != FORMAT_VERSION:
            raise self.fail(f"unsupported format_version {self.m.get('format_version')!r}")
        for name, info in self.need("files", dict).items():
            check_member_name(name, f"{self.mpath}: files")
            if not isinstance(info, dict) or not isinstance(info.get("sha256"), str) or \
                    not _HEX64.match(info["sha256"]) or type(info.get("size")) is not int or info["size"] < 0:
                raise self.fail(f"files[{name!r}]: expected {{sha256: 64 hex digits, size: int >= 0}}")
        if MANIFEST in self.m["files"]:
            raise self.fail("files: the manifest cannot list itself")
        self.listed(self.m.get("labels"), "labels")
        self.listed(self.m.get("preprocess"), "preprocess")
        for key in ("calibration_cache", "seen_images"):  # optional files
            if self.m.get(key) is not None:
                self.listed(self.m[key], key)

    def artifacts(self) -> None:
        arts = self.need("artifacts", list)
        if not arts:
            raise self.fail("artifacts: empty (a bundle needs at least one model)")
        for i, a in enumerate(arts):
            if not isinstance(a, dict):
                raise self.fail(f"artifacts[{i}]: expected an object")
            for k in ("target", "precision"):
                if not isinstance(a.get(k), str):
                    raise self.fail(f"artifacts[{i}].{k}: expected a string, got {a.get(k)!r}")
            self.listed(a.get("file"), f"artifacts[{i}].file")
            if not a["file"].endswith(".onnx"):
                raise self.fail(f"artifacts[{i}].file: {a['file']!r} is not an .onnx model")

    def defaults(self) -> None:
        arts, default = self.m["artifacts"], self.need("default", dict)
        for t, d in default.items():
            if not isinstance(d, dict):
                raise self.fail(f"default[{t!r}]: expected an object")
            self.listed(d.get("file"), f"default[{t!r}].file")
            if not any(a["file"] == d["file"] and a["target"] == t for a in arts):
                raise self.fail(f"default[{t!r}].file: {d['file']!r} is not a {t} artefact")
        cpu = self.m.get("cpu_default")
        if cpu is not None:
            if not isinstance(cpu, dict) or not isinstance(cpu.get("target"), str) or cpu["target"] not in default:
                raise self.fail("cpu_default: expected {target: one of default's targets, file, precision}")
            if cpu.get("file") != default[cpu["target"]].get("file"):
                raise self.fail(f"cpu_default.file: {cpu.get('file')!r} is not default[{cpu['target']!r}].file")

    def io(self) -> None:
        for key in ("inputs", "outputs"):
            specs = self.need(key, list)
            if not specs:
                raise self.fail(f"{key}: empty")
            for i, s in enumerate(specs):
                if not isinstance(s, dict) or not isinstance(s.get("name"), str) or not isinstance(s.get("shape"), list):
                    raise self.fail(f"{key}[{i}]: expected {{name: str, shape: list}}")
                for d in s["shape"]:
                    if isinstance(d, bool) or not (isinstance(d, str) or (isinstance(d, int) and d >= 0)):
                        raise self.fail(f"{key}[{i}].shape: bad dimension {d!r}")

    def release_and_compat(self) -> None:
        rel = self.m.get("release")
        if rel is not None and (type(rel) is not int or rel < 0):
            raise self.fail(f"release: expected an integer >= 0, got {rel!r}")
        compat = self.m.get("compat")
        if compat is None:
            return
        arch, trt = (compat.get("arch"), compat.get("tensorrt_major")) if isinstance(compat, dict) else (0, 0)
        if not isinstance(compat, dict) or not (arch is None or (
                isinstance(arch, list) and all(isinstance(a, str) for a in arch))) or not (trt is None or (
                isinstance(trt, list) and len(trt) == 2 and all(type(v) is int for v in trt))):
            raise self.fail("compat: expected {arch: [str] or null, tensorrt_major: [int, int] or null, min_edgecv: str}")

    def golden(self) -> None:
        golden = self.m.get("golden")
        if golden is None:
            return
        if not isinstance(golden, dict):
            raise self.fail("golden: expected an object")
        self.listed(golden.get("file"), "golden.file")
        budget = golden.get("budget", {})
        if not isinstance(budget, dict):
            raise self.fail("golden.budget: expected {min_agreement: number, max_drop: number}")
        try:
            Budget.from_dict(budget)
        except ValueError as e:
            raise self.fail(f"golden.budget.{e}") from None


def validate_manifest(m: Any, mpath: Path) -> None:
    """Check the manifest's shape and that every file it refers to is a listed, confined name."""
    if not isinstance(m, dict):
        raise BundleError(f"{mpath}: expected a JSON object, got {type(m).__name__}")
    c = _Checker(m, mpath)
    for check in (c.files, c.artifacts, c.defaults, c.io, c.release_and_compat, c.golden):
        check()
    if m.get("model") is not None and not isinstance(m["model"], dict):
        raise c.fail("model: expected an object")


# What an edgecv bundle folder may hold, for the output rule (edgecv.utils.outputs): every file its intact manifest
# lists, the manifest, and the signature.
BUNDLE = OutputKind("bundle", BUNDLE_NAMES, MANIFEST, (SIGNATURE,), listed_files)
