"""Deploy bundles: ``manifest.json`` indexes every file with its sha256 and size.

``open_bundle`` refuses a bundle with a missing, truncated or modified file, naming the file.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from edgecv.errors import BundleError
from edgecv.utils.io import sha256_file

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


@dataclass
class Bundle:
    root: Path
    manifest: Dict

    @property
    def labels(self) -> List[str]:
        return (self.root / self.manifest["labels"]).read_text().splitlines()

    @property
    def preprocess(self) -> Dict:
        return json.loads((self.root / self.manifest["preprocess"]).read_text())

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

    def path(self, name: str) -> Path:
        return self.root / name


def manifest_digest(raw: bytes) -> Optional[str]:
    """sha256 of the manifest's bytes with its own hash value blanked to zeros (so any byte change shows)."""
    import hashlib
    import re

    blanked, n = re.subn(rb'"manifest_sha256": "[0-9a-f]*"', b'"manifest_sha256": "' + b"0" * 64 + b'"', raw)
    return hashlib.sha256(blanked).hexdigest() if n == 1 else None


def manifest_bytes(manifest: Dict) -> bytes:
    """Serialise a manifest with its self-checksum filled in."""
    blank = b'"manifest_sha256": "' + b"0" * 64 + b'"'
    raw = (json.dumps(dict(manifest, manifest_sha256="0" * 64), indent=2) + "\n").encode()
    return raw.replace(blank, b'"manifest_sha256": "' + manifest_digest(raw).encode() + b'"')


def open_bundle(path: str | Path, verify: bool = True) -> Bundle:
    """Read ``manifest.json`` and (by default) verify every file's size and sha256."""
    root = Path(path)
    mpath = root / MANIFEST
    if not root.is_dir():
        raise BundleError(f"{root}: not a bundle directory")
    if not mpath.is_file():
        raise BundleError(f"{mpath}: missing (not an edgecv bundle)")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{mpath}: not valid JSON ({e})") from None
    raw = mpath.read_bytes()
    if manifest_digest(raw) != manifest.get("manifest_sha256"):
        raise BundleError(f"{mpath}: manifest_sha256 does not match its content (manifest modified)")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{mpath}: unsupported format_version {manifest.get('format_version')!r}")
    if verify:
        for name, info in manifest.get("files", {}).items():
            f = root / name
            if not f.is_file():
                raise BundleError(f"{f}: listed in the manifest but missing")
            size = f.stat().st_size
            if size != info["size"]:
                raise BundleError(f"{f}: size {size} != {info['size']} in the manifest (truncated or modified)")
            if sha256_file(f) != info["sha256"]:
                raise BundleError(f"{f}: sha256 does not match the manifest (file modified)")
    return Bundle(root, manifest)
