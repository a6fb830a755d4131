"""Deploy bundles: ``manifest.json`` indexes every file with its sha256 and size.

``open_bundle`` is the one gate every command passes (``check``, ``eval``, ``run``, ``bench``, ``profile``,
``build``). Its rules (the README's "What edgecv guarantees"):

- the manifest is a JSON object of the documented shape; a wrong type names its key;
- every path in it is a plain relative name inside the bundle: no absolute paths, no ``..``, no empty or
  ``.`` components, no backslashes; no file or folder on the way is a symbolic link;
- every file the manifest refers to anywhere (labels, preprocessing, calibration cache, artefacts, defaults)
  is in its checksummed ``files`` list, and every listed file has the listed size and sha256;
- labels are UTF-8, one per class, as many as the model has outputs; ``preprocess.json`` is a JSON object
  with valid values.

Files are read only through :meth:`Bundle.path`, which enforces the same rules, so nothing outside the
bundle (and nothing unlisted inside it) is ever opened.
"""
from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from edgecv.errors import BundleError
from edgecv.utils.io import sha256_file

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
MAX_MANIFEST_BYTES = 16 << 20
# The fidelity budget's ranges (as the export's --min-agreement and --max-drop take them): NaN or -1 in a hand-edited
# manifest would let verify accept any int8 answer.
BUDGET_RANGES = {"min_agreement": (0.0, 1.0), "max_drop": (0.0, 100.0)}


def strict_json(raw: bytes | str, where: str):
    """``json.loads`` that refuses NaN and Infinity (Python's json accepts them; no edgecv file holds one)."""
    def refuse(name):
        raise BundleError(f"{where}: {name} is not a number a bundle may hold")

    text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    return json.loads(text, parse_constant=refuse)


def check_member_name(name: Any, where: str) -> str:
    """``name`` if it is a plain relative path inside a bundle, else a BundleError naming ``where``."""
    if not isinstance(name, str) or not name:
        raise BundleError(f"{where}: expected a file name inside the bundle, got {name!r}")
    if name.startswith("/") or "\\" in name or "\x00" in name or re.match(r"^[A-Za-z]:", name):
        raise BundleError(f"{where}: {name!r} is not a relative path inside the bundle")
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise BundleError(f"{where}: {name!r} leaves or escapes the bundle (empty, '.' or '..' component)")
    return name


def _regular_file_inside(root: Path, name: str, where: str) -> Path:
    """``root/name`` after checking that no component is a symbolic link and the file is a regular file."""
    cur = root
    parts = name.split("/")
    for i, part in enumerate(parts):
        cur = cur / part
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            raise BundleError(f"{cur}: {where} but missing") from None
        except OSError as e:
            raise BundleError(f"{cur}: cannot be read ({e.strerror})") from None
        if stat.S_ISLNK(st.st_mode):
            raise BundleError(f"{cur}: is a symbolic link; bundles may not contain links")
        if i < len(parts) - 1 and not stat.S_ISDIR(st.st_mode):
            raise BundleError(f"{cur}: is not a folder")
        if i == len(parts) - 1 and not stat.S_ISREG(st.st_mode):
            raise BundleError(f"{cur}: is not a regular file")
    return cur


def _need(m: Dict, key: str, types, mpath: Path, optional: bool = False):
    v = m.get(key)
    if v is None and optional:
        return None
    if not isinstance(v, types) or isinstance(v, bool):
        tn = "/".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise BundleError(f"{mpath}: key {key!r}: expected {tn}, got {type(v).__name__}")
    return v


def validate_manifest(m: Any, mpath: Path) -> None:
    """Check the manifest's shape and that every file it refers to is a listed, confined name."""
    if not isinstance(m, dict):
        raise BundleError(f"{mpath}: expected a JSON object, got {type(m).__name__}")
    if m.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{mpath}: unsupported format_version {m.get('format_version')!r}")
    files = _need(m, "files", dict, mpath)
    for name, info in files.items():
        check_member_name(name, f"{mpath}: files")
        if not isinstance(info, dict) or not isinstance(info.get("sha256"), str) or \
                not _HEX64.match(info["sha256"]) or not isinstance(info.get("size"), int) or \
                isinstance(info.get("size"), bool) or info["size"] < 0:
            raise BundleError(f"{mpath}: files[{name!r}]: expected {{sha256: 64 hex digits, size: int >= 0}}")
    if MANIFEST in files:
        raise BundleError(f"{mpath}: files: the manifest cannot list itself")

    def listed(value: Any, key: str) -> None:
        check_member_name(value, f"{mpath}: {key}")
        if value not in files:
            raise BundleError(f"{mpath}: {key}: {value!r} is not in the checksummed file list")

    listed(m.get("labels"), "labels")
    listed(m.get("preprocess"), "preprocess")
    if m.get("calibration_cache") is not None:
        listed(m["calibration_cache"], "calibration_cache")
    arts = _need(m, "artifacts", list, mpath)
    if not arts:
        raise BundleError(f"{mpath}: artifacts: empty (a bundle needs at least one model)")
    for i, a in enumerate(arts):
        if not isinstance(a, dict):
            raise BundleError(f"{mpath}: artifacts[{i}]: expected an object")
        for k in ("target", "precision"):
            if not isinstance(a.get(k), str):
                raise BundleError(f"{mpath}: artifacts[{i}].{k}: expected a string, got {a.get(k)!r}")
        listed(a.get("file"), f"artifacts[{i}].file")
        if not a["file"].endswith(".onnx"):
            raise BundleError(f"{mpath}: artifacts[{i}].file: {a['file']!r} is not an .onnx model")
    default = _need(m, "default", dict, mpath)
    for t, d in default.items():
        if not isinstance(d, dict):
            raise BundleError(f"{mpath}: default[{t!r}]: expected an object")
        listed(d.get("file"), f"default[{t!r}].file")
        if not any(a["file"] == d["file"] and a["target"] == t for a in arts):
            raise BundleError(f"{mpath}: default[{t!r}].file: {d['file']!r} is not a {t} artefact")
    cpu = m.get("cpu_default")
    if cpu is not None:
        if not isinstance(cpu, dict) or not isinstance(cpu.get("target"), str) or cpu["target"] not in default:
            raise BundleError(f"{mpath}: cpu_default: expected {{target: one of default's targets, file, precision}}")
        if cpu.get("file") != default[cpu["target"]].get("file"):
            raise BundleError(f"{mpath}: cpu_default.file: {cpu.get('file')!r} is not default[{cpu['target']!r}].file")
    for key in ("inputs", "outputs"):
        specs = _need(m, key, list, mpath)
        if not specs:
            raise BundleError(f"{mpath}: {key}: empty")
        for i, s in enumerate(specs):
            if not isinstance(s, dict) or not isinstance(s.get("name"), str) or not isinstance(s.get("shape"), list):
                raise BundleError(f"{mpath}: {key}[{i}]: expected {{name: str, shape: list}}")
            for d in s["shape"]:
                if isinstance(d, bool) or not (isinstance(d, str) or (isinstance(d, int) and d >= 0)):
                    raise BundleError(f"{mpath}: {key}[{i}].shape: bad dimension {d!r}")
    rel = m.get("release")
    if rel is not None and (isinstance(rel, bool) or not isinstance(rel, int) or rel < 0):
        raise BundleError(f"{mpath}: release: expected an integer >= 0, got {rel!r}")
    compat = m.get("compat")
    if compat is not None and (not isinstance(compat, dict) or not (compat.get("arch") is None or (
            isinstance(compat["arch"], list) and all(isinstance(a, str) for a in compat["arch"]))) or not (
            compat.get("tensorrt_major") is None or (isinstance(compat["tensorrt_major"], list) and len(
                compat["tensorrt_major"]) == 2 and all(type(v) is int for v in compat["tensorrt_major"])))):
        raise BundleError(f"{mpath}: compat: expected {{arch: [str] or null, tensorrt_major: [int, int] or null, "
                          "min_edgecv: str}")
    golden = m.get("golden")
    if golden is not None:
        if not isinstance(golden, dict):
            raise BundleError(f"{mpath}: golden: expected an object")
        listed(golden.get("file"), "golden.file")
        budget = golden.get("budget", {})
        if not isinstance(budget, dict):
            raise BundleError(f"{mpath}: golden.budget: expected {{min_agreement: number, max_drop: number}}")
        for key, (lo, hi) in BUDGET_RANGES.items():
            v = budget.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
                raise BundleError(f"{mpath}: golden.budget.{key}: expected a number from {lo} to {hi}, got {v!r}")
    model = m.get("model")
    if model is not None and not isinstance(model, dict):
        raise BundleError(f"{mpath}: model: expected an object")


def validate_preprocess(spec: Any, where: str) -> Dict:
    """The preprocessing spec's values, checked (what edgecv.runtime.preprocess reads)."""
    if not isinstance(spec, dict):
        raise BundleError(f"{where}: expected a JSON object, got {type(spec).__name__}")

    def pos_int(key, optional=False):
        v = spec.get(key)
        if v is None and optional:
            return
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 8192:
            raise BundleError(f"{where}: {key}: expected an integer in 1..8192, got {v!r}")

    pos_int("input_size")
    pos_int("resize", True)
    pos_int("crop", True)
    ch = spec.get("channels")
    if ch not in (1, 3) or isinstance(ch, bool):
        raise BundleError(f"{where}: channels: expected 1 or 3, got {ch!r}")
    for key in ("mean", "std"):
        v = spec.get(key)
        if not isinstance(v, list) or len(v) != ch or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and x == x and abs(x) < 1e6 for x in v):
            raise BundleError(f"{where}: {key}: expected {ch} finite numbers, got {v!r}")
    if any(s <= 0 for s in spec["std"]):
        raise BundleError(f"{where}: std: every value must be > 0, got {spec['std']!r}")
    sc = spec.get("scale", 1 / 255)
    if isinstance(sc, bool) or not isinstance(sc, (int, float)) or not 0 < sc < 1e6:
        raise BundleError(f"{where}: scale: expected a number > 0, got {sc!r}")
    crop = spec.get("crop") or spec["input_size"]
    if crop > (spec.get("resize") or spec["input_size"]):
        raise BundleError(f"{where}: crop {crop} is larger than resize {spec.get('resize')}")
    return spec


@dataclass
class Bundle:
    root: Path
    manifest: Dict
    signed_by: Optional[Path] = None  # the trusted key its signature verified with (None: no key is trusted here)
    _cache: Dict[str, Any] = field(default_factory=dict, repr=False)

    def path(self, name: str) -> Path:
        """The path of a listed file; anything unlisted, outside or linked is refused."""
        check_member_name(name, f"{self.root / MANIFEST}")
        if name not in self.manifest["files"]:
            raise BundleError(f"{self.root}: {name!r} is not in the manifest's checksummed file list")
        return _regular_file_inside(self.root, name, "listed in the manifest")

    def read_text(self, name: str) -> str:
        p = self.path(name)
        try:
            return p.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise BundleError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None

    @property
    def labels(self) -> List[str]:
        if "labels" not in self._cache:
            name = self.manifest["labels"]
            labels = self.read_text(name).splitlines()
            n = (self.manifest.get("model") or {}).get("num_classes")
            out_dim = self.output_classes()
            for want in (n, out_dim):
                if isinstance(want, int) and not isinstance(want, bool) and len(labels) != want:
                    raise BundleError(f"{self.path(name)}: {len(labels)} labels, but the model has {want} classes")
            self._cache["labels"] = labels
        return self._cache["labels"]

    def output_classes(self) -> Optional[int]:
        """The class count the manifest declares for the first output (None when dynamic)."""
        shape = self.manifest["outputs"][0]["shape"]
        return shape[-1] if shape and isinstance(shape[-1], int) and shape[-1] > 0 else None

    @property
    def preprocess(self) -> Dict:
        if "preprocess" not in self._cache:
            name = self.manifest["preprocess"]
            try:
                spec = strict_json(self.read_text(name), str(self.path(name)))
            except json.JSONDecodeError as e:
                raise BundleError(f"{self.path(name)}: not valid JSON ({e.msg}, line {e.lineno})") from None
            self._cache["preprocess"] = validate_preprocess(spec, str(self.path(name)))
        return self._cache["preprocess"]

    def artifact(self, target: str, precision: Optional[str] = None) -> Dict:
        """The artefact to run for ``target``: the manifest's default unless ``precision`` names another."""
        arts = [a for a in self.manifest["artifacts"] if a["target"] == target]
        if precision:
            arts = [a for a in arts if a["precision"] == precision]
        elif target in self.manifest.get("default", {}):
            arts = [a for a in arts if a["file"] == self.manifest["default"][target]["file"]]
        if not arts:
            raise BundleError(f"{self.root}: no {precision or 'default'} artefact for target {target!r}")
        return arts[0]


def manifest_digest(raw: bytes) -> Optional[str]:
    """sha256 of the manifest's bytes with its own hash value blanked to zeros (so any byte change shows)."""
    import hashlib

    blanked, n = re.subn(rb'"manifest_sha256": "[0-9a-f]*"', b'"manifest_sha256": "' + b"0" * 64 + b'"', raw)
    return hashlib.sha256(blanked).hexdigest() if n == 1 else None


def manifest_bytes(manifest: Dict) -> bytes:
    """Serialise a manifest with its self-checksum filled in."""
    blank = b'"manifest_sha256": "' + b"0" * 64 + b'"'
    raw = (json.dumps(dict(manifest, manifest_sha256="0" * 64), indent=2) + "\n").encode()
    return raw.replace(blank, b'"manifest_sha256": "' + manifest_digest(raw).encode() + b'"')


def is_bundle_dir(path: str | os.PathLike) -> bool:
    return Path(os.fsdecode(path)).is_dir() and (Path(os.fsdecode(path)) / MANIFEST).is_file()


def open_bundle(path: "str | os.PathLike | Bundle", verify: bool = True, trust: bool = True) -> Bundle:
    """Read and validate ``manifest.json`` and (by default) verify every file's size and sha256.

    When a trusted public key is configured (edgecv.deploy.signing), the bundle's signature is verified first,
    before anything in it is parsed (``trust=False`` skips that, for signing itself). An install root (from
    ``edgecv install``) opens its active slot. A :class:`Bundle` passed in is returned as it is.
    """
    if isinstance(path, Bundle):
        return path
    root = Path(os.fsdecode(path))
    if not root.is_dir():
        raise BundleError(f"{root}: not a bundle directory")
    from edgecv.deploy.install import active_slot

    root = active_slot(root) or root
    root = Path(os.path.realpath(root))  # the root may be a link the user chose; nothing below it may be
    signed_by = None
    if trust:
        from edgecv.deploy.signing import configured_trust, verify_signature

        keys = configured_trust()
        if keys:
            signed_by = verify_signature(root, keys)
    mpath = _regular_file_inside(root, MANIFEST, "required (not an edgecv bundle)")
    if mpath.stat().st_size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{mpath}: {mpath.stat().st_size} bytes; not an edgecv manifest")
    raw = mpath.read_bytes()
    try:
        manifest = strict_json(raw, str(mpath))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{mpath}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{mpath}: expected a JSON object, got {type(manifest).__name__}")
    if manifest_digest(raw) != manifest.get("manifest_sha256"):
        raise BundleError(f"{mpath}: manifest_sha256 does not match its content (manifest modified)")
    validate_manifest(manifest, mpath)
    if verify:
        for name, info in manifest["files"].items():
            f = _regular_file_inside(root, name, "listed in the manifest")
            size = f.stat().st_size
            if size != info["size"]:
                raise BundleError(f"{f}: size {size} != {info['size']} in the manifest (truncated or modified)")
            if sha256_file(f) != info["sha256"]:
                raise BundleError(f"{f}: sha256 does not match the manifest (file modified)")
    return Bundle(root, manifest, signed_by)
