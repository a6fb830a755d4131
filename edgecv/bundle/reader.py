"""``open_bundle``: the one gate every command passes (``check``, ``eval``, ``run``, ``bench``, ``profile``,
``build``, ``install``). Its rules (docs/guarantees.md):

- when a key is trusted, the signature is verified before anything in the bundle is parsed (edgecv.bundle.trust);
- the manifest is a JSON object of the documented shape; a wrong type names its key (edgecv.bundle.manifest);
- every path in it is a plain relative name inside the bundle: no absolute paths, no ``..``, no empty or
  ``.`` components, no backslashes; no file or folder on the way is a symbolic link;
- every file the manifest refers to anywhere is in its checksummed ``files`` list, and every listed file has the
  listed size and sha256;
- labels are UTF-8, one per class, as many as the model has outputs; ``preprocess.json`` is a valid
  :class:`~edgecv.bundle.spec.PreprocessSpec`.

Files are read only through :meth:`Bundle.path`, which enforces the same rules, so nothing outside the
bundle (and nothing unlisted inside it) is ever opened.
"""
from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from edgecv.bundle.manifest import MAX_MANIFEST_BYTES, check_member_name, manifest_digest, strict_json, validate_manifest
from edgecv.bundle.names import MANIFEST
from edgecv.bundle.spec import PreprocessSpec
from edgecv.errors import BundleError
from edgecv.utils.io import sha256_file

# What ``open_bundle`` trusts: True, the keys this machine is configured with (edgecv.bundle.trust); False, no
# signature check (for signing itself); or the public keys to check against.
TrustPolicy = Union[bool, Sequence[Path]]


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
            for want in (n, self.output_classes()):
                if isinstance(want, int) and not isinstance(want, bool) and len(labels) != want:
                    raise BundleError(f"{self.path(name)}: {len(labels)} labels, but the model has {want} classes")
            self._cache["labels"] = labels
        return self._cache["labels"]

    def output_classes(self) -> Optional[int]:
        """The class count the manifest declares for the first output (None when dynamic)."""
        shape = self.manifest["outputs"][0]["shape"]
        return shape[-1] if shape and isinstance(shape[-1], int) and shape[-1] > 0 else None

    @property
    def preprocess(self) -> PreprocessSpec:
        if "preprocess" not in self._cache:
            name = self.manifest["preprocess"]
            try:
                spec = strict_json(self.read_text(name), str(self.path(name)))
            except json.JSONDecodeError as e:
                raise BundleError(f"{self.path(name)}: not valid JSON ({e.msg}, line {e.lineno})") from None
            self._cache["preprocess"] = PreprocessSpec.from_dict(spec, str(self.path(name)))
        return self._cache["preprocess"]

    def artifact(self, target: str, precision: Optional[str] = None) -> Dict:
        """The artefact to run for ``target``: the manifest's default unless ``precision`` names another."""
        arts = [a for a in self.manifest["artifacts"] if a["target"] == target]
        if precision:
            arts = [a for a in arts if a["precision"] == precision]
        elif target in self.manifest.get("default", {}):
            d = self.manifest["default"][target]  # its precision too: bf16 runs the fp32 artefact's file
            arts = [a for a in arts if a["file"] == d["file"] and a["precision"] == d.get("precision", a["precision"])]
        if not arts:
            raise BundleError(f"{self.root}: no {precision or 'default'} artefact for target {target!r}")
        return arts[0]


def is_bundle_dir(path: str | os.PathLike) -> bool:
    return Path(os.fsdecode(path)).is_dir() and (Path(os.fsdecode(path)) / MANIFEST).is_file()


def _read_manifest(root: Path) -> Dict:
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
    return manifest


def _verify_files(root: Path, manifest: Dict) -> None:
    for name, info in manifest["files"].items():
        f = _regular_file_inside(root, name, "listed in the manifest")
        size = f.stat().st_size
        if size != info["size"]:
            raise BundleError(f"{f}: size {size} != {info['size']} in the manifest (truncated or modified)")
        if sha256_file(f) != info["sha256"]:
            raise BundleError(f"{f}: sha256 does not match the manifest (file modified)")


def open_bundle(path: "str | os.PathLike | Bundle", verify: bool = True, trust: TrustPolicy = True,
                resolve_slot: bool = True) -> Bundle:
    """Read and validate ``manifest.json`` and (by default) verify every file's size and sha256.

    ``trust`` (a :data:`TrustPolicy`): the signature is verified first, before anything in the bundle is parsed,
    whenever there is a key to check it with. ``resolve_slot``: an install root (from ``edgecv install``) opens its
    active slot. A :class:`Bundle` passed in is returned as it is.
    """
    from edgecv.bundle.slots import active_slot
    from edgecv.bundle.trust import configured_trust, verify_signature

    if isinstance(path, Bundle):
        return path
    root = Path(os.fsdecode(path))
    if not root.is_dir():
        raise BundleError(f"{root}: not a bundle directory")
    if resolve_slot:
        root = active_slot(root) or root
    root = Path(os.path.realpath(root))  # the root may be a link the user chose; nothing below it may be
    keys = configured_trust() if trust is True else list(trust or [])
    signed_by = verify_signature(root, keys) if keys else None
    manifest = _read_manifest(root)
    if verify:
        _verify_files(root, manifest)
    return Bundle(root, manifest, signed_by)
