"""Image folders: the ImageFolder tree (one folder per class) and the flat ``<wnid>_*.JPEG`` layout.

Unreadable files are counted, reported once, and skipped; they never stop an epoch.
Listing and checking use PIL only, so the runtime (no torch) can share this module.
"""
from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from edgecv.errors import DatasetError
from edgecv.utils.images import IMAGE_EXTS
from edgecv.utils.io import NotASmallFile, read_small, relative_hint, utf8_safe, while_unchanged

log = logging.getLogger("edgecv.data")


@dataclass
class ImageList:
    """Image paths with class indices, the class names, and the files that were skipped."""

    samples: List[Tuple[str, int]]
    classes: List[str]
    root: str
    skipped: List[Tuple[str, str]] = field(default_factory=list)  # (path, reason)
    training_copies: int = 0  # held-out images left out as byte-for-byte copies of training images

    def __len__(self) -> int:
        return len(self.samples)

    def subset(self, indices: Sequence[int]) -> "ImageList":
        return ImageList([self.samples[i] for i in indices], self.classes, self.root, list(self.skipped))


def _not_a_folder(root: Path) -> str:
    """Why ``root`` cannot be listed as an image folder: missing, or something else (a file, a device)."""
    if root.exists():
        return f"{root}: not a folder (an image folder holds one sub-folder of images per class)"
    return f"{root}: image folder not found{relative_hint(root)}"


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTS


def check_image(path: str) -> Optional[str]:
    """Return None when PIL can open and verify ``path`` and its header's size is within the frame budget
    (``edgecv.utils.images.frame_size_problem``), else the reason it cannot."""
    from PIL import Image

    from edgecv.utils.limits import frame_size_problem

    if os.path.getsize(path) == 0:
        return "empty file"
    try:
        with Image.open(path) as im:
            problem = frame_size_problem(im.height, im.width)  # from the header, before decoding anything
            im.verify()
        return problem
    except Exception as e:  # PIL raises many types for bad files
        return pil_failure(e)


def pil_failure(e: Exception) -> str:
    """Why PIL could not open or decode an image, in the words every skip message uses (without the path)."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(e, UnidentifiedImageError):
        return "not an image PIL can decode"
    if isinstance(e, Image.DecompressionBombError):  # PIL refuses to open it: its limit is above the frame budget
        return f"over the frame budget (more than PIL's limit of {2 * (Image.MAX_IMAGE_PIXELS or 0):,} pixels)"
    return f"cannot decode ({e})"


_CHECKED: Dict[Tuple[str, int, int], Optional[str]] = {}


def _checked(path: str) -> Optional[str]:
    """``check_image`` once per file version: the splits and the training-copy screen list one folder again."""
    try:
        return while_unchanged(_CHECKED, path, check_image)
    except OSError as e:  # gone or unreadable since the listing
        return f"{type(e).__name__}: {e.strerror}"


def _screen(samples: List[Tuple[str, int]], root: str, verify: bool) -> Tuple[List, List]:
    good, bad = [], []
    for path, label in samples:
        reason = _checked(path) if verify else None
        if reason is None:
            good.append((path, label))
        else:
            bad.append((path, reason))
    if bad and (root, len(bad)) not in _WARNED:
        _WARNED.add((root, len(bad)))  # the train and held-out splits list one folder twice: say it once
        shown = "; ".join(f"{Path(p).name} ({r})" for p, r in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        log.warning("%s: skipped %d unreadable file(s): %s%s", root, len(bad), shown, more)
    return good, bad


_WARNED: set = set()


def list_image_folder(root: str | Path, verify: bool = True) -> ImageList:
    """One sub-folder per class (sorted names give the class indices), as torchvision's ImageFolder."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(_not_a_folder(root))
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DatasetError(f"{root}: no class sub-folders (expected ROOT/<class>/<image>)")
    for c in classes:
        # a class name travels into labels.txt (a line each), the manifest and the reports, all UTF-8: caught
        # after a whole training run, a folder name that was not UTF-8 crashed the confusion chart
        if not utf8_safe(c) or any(ord(ch) < 32 or ord(ch) == 127 for ch in c):
            raise DatasetError(f"{root}: class folder {os.fsencode(c)!r} is not a printable UTF-8 name (a class name "
                               "goes into labels.txt, one per line, and the manifest): rename it")
    raw = [(str(p), i) for i, c in enumerate(classes) for p in sorted((root / c).rglob("*"))
           if p.is_file() and not p.name.startswith(".")]
    loose = [p.name for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file()]
    if loose:  # no class folder, so no label: left out as torchvision's ImageFolder does, but said
        log.warning("%s: %d image(s) outside the class folders left out (%s%s): an image's label is its folder",
                    root, len(loose), ", ".join(sorted(loose)[:3]), ", ..." if len(loose) > 3 else "")
    good, bad = _screen(raw, str(root), verify)
    if not good:
        raise DatasetError(f"{root}: no readable images ({len(bad)} unreadable)")
    return ImageList(good, classes, str(root), bad)


def read_classes_tsv(path: str | Path) -> Tuple[List[str], dict]:
    """Parse ``classes.tsv`` (index, wnid, name) strictly. Returns (names by index, wnid -> index).

    UTF-8 text; a header ``index<TAB>wnid<TAB>name``; integer indices 0..N-1, each exactly once; each wnid
    once (a repeated wnid would silently relabel its images). Every error names the file and line.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: classes.tsv not found (columns: index, wnid, name)")
    try:
        raw = read_small(path)
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DatasetError(f"{path}:{line}: not UTF-8 text ({e.reason}); save the file as UTF-8") from None
    except NotASmallFile as e:
        raise DatasetError(f"{path}: not a classes.tsv ({e})") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e.strerror})") from None
    rows = list(csv.reader(text.splitlines(), delimiter="\t"))
    if not rows or [c.strip().lower() for c in rows[0][:3]] != ["index", "wnid", "name"]:
        raise DatasetError(f"{path}: expected a header 'index<TAB>wnid<TAB>name'")
    names, wnids = {}, {}
    for n, row in enumerate(rows[1:], start=2):
        if not row or not any(c.strip() for c in row):
            continue
        if len(row) < 3:
            raise DatasetError(f"{path}:{n}: expected 3 tab-separated columns, got {len(row)}")
        try:
            idx = int(row[0].strip())
        except ValueError:
            raise DatasetError(f"{path}:{n}: index {row[0]!r} is not an integer") from None
        wnid = row[1].strip()
        if idx < 0:
            raise DatasetError(f"{path}:{n}: negative index {idx}")
        if idx in names:
            raise DatasetError(f"{path}:{n}: index {idx} appears twice")
        if not wnid:
            raise DatasetError(f"{path}:{n}: empty wnid")
        if wnid in wnids:
            raise DatasetError(f"{path}:{n}: wnid {wnid!r} appears twice (also index {wnids[wnid]})")
        names[idx], wnids[wnid] = row[2], idx
    if not names:
        raise DatasetError(f"{path}: no classes listed")
    gaps = [i for i in range(len(names)) if i not in names]
    if gaps:
        raise DatasetError(f"{path}: indices must run 0..{len(names) - 1} without gaps; missing {gaps[:5]} "
                           f"(largest index {max(names)})")
    ordered = [names[i] for i in range(len(names))]
    return ordered, wnids


def list_wnid_folder(root: str | Path, verify: bool = True, classes_tsv: str | Path | None = None) -> ImageList:
    """Flat folder of ``<wnid>_<anything>.JPEG`` files; ``classes.tsv`` maps wnids to class indices."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(_not_a_folder(root))
    names, wnids = read_classes_tsv(classes_tsv or root / "classes.tsv")
    raw, unknown = [], []
    for p in sorted(root.iterdir()):
        if not p.is_file() or p.name == "classes.tsv" or p.name.startswith("."):
            continue
        wnid = p.name.split("_", 1)[0]
        if wnid in wnids:
            raw.append((str(p), wnids[wnid]))
        else:
            unknown.append((str(p), f"wnid {wnid!r} not in classes.tsv"))
    good, bad = _screen(raw, str(root), verify)
    bad = unknown + bad
    if unknown:
        log.warning("%s: skipped %d file(s) whose wnid is not in classes.tsv", root, len(unknown))
    if not good:
        raise DatasetError(f"{root}: no readable images named <wnid>_*.JPEG ({len(bad)} skipped)")
    return ImageList(good, names, str(root), bad)


def list_images(root: str | Path, verify: bool = True) -> ImageList:
    """Pick the layout: a flat folder with classes.tsv, or an ImageFolder tree."""
    root = Path(root)
    if (root / "classes.tsv").is_file():
        return list_wnid_folder(root, verify)
    if root.is_dir() and any(d.is_dir() for d in root.iterdir()):
        return list_image_folder(root, verify)
    if root.is_dir():
        # A flat folder without labels (e.g. calibration images): label -1.
        raw = [(str(p), -1) for p in sorted(root.iterdir()) if p.is_file() and not p.name.startswith(".")]
        good, bad = _screen(raw, str(root), verify)
        if not good:
            raise DatasetError(f"{root}: no readable images ({len(bad)} unreadable)")
        return ImageList(good, [], str(root), bad)
    raise DatasetError(_not_a_folder(root))
