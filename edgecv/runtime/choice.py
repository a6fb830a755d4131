"""What ``edgecv verify`` chose on this device, per bundle (by manifest hash): written by verify, read by backend
selection, so that ``run``, ``bench``, ``eval``, ``profile`` and ``Classifier`` use the precision that was measured
here by default."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional

from edgecv import targets
from edgecv.utils.cache import cache_dir, writable_cache_dir
from edgecv.utils.io import atomic_write_json


def choice_dir() -> Path:
    return cache_dir("verified")


def choice_dir_writable(create: bool = True) -> Path:
    """The choice folder (made unless ``create`` is False); an OutputError naming it (and EDGECV_CACHE) when it
    cannot be written."""
    return writable_cache_dir("verified", create)


def choice_path(bundle) -> Path:
    return choice_dir() / f"{bundle.manifest['manifest_sha256'][:32]}.json"


def recorded_choice(bundle) -> Optional[Dict]:
    """The choice ``verify`` recorded on this device for exactly this bundle (by manifest hash), or None."""
    p = choice_path(bundle)
    try:
        rec = json.loads(p.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(rec, dict) or rec.get("manifest_sha256") != bundle.manifest["manifest_sha256"]:
        return None
    c = rec.get("chosen")
    if not isinstance(c, dict) or c.get("target") not in targets.names() or not isinstance(c.get("precision"), str) \
            or type(c.get("dla_core", -1)) is not int:
        return None  # a damaged or hand-edited record is ignored: the manifest's default applies
    return c


def record_choice(bundle, report: Dict) -> Path:
    """Write verify's report (its ``chosen`` entry is the choice) for this bundle on this device."""
    choice_dir_writable()  # a read-only or misplaced cache is named, not a bare errno
    p = choice_path(bundle)
    atomic_write_json(p, report)
    return p
