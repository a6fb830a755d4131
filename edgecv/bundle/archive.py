"""A bundle as one file, for distribution (a TUF target, ``edgecv publish``/``update``): an uncompressed POSIX tar
of the bundle's files (the manifest, every file it lists, and the signature), written deterministically (sorted
names, no owners, no times), so the same bundle always packs to the same bytes and hash.

Unpacking takes nothing but plain relative names of regular files (the bundle format's own rule), within a size
budget; a link, a device, ``..``, an absolute path or anything past the budget refuses the archive, naming the
member. What is unpacked is then opened with ``open_bundle`` like any bundle: checksums, and the signature when a
key is trusted.
"""
from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

from edgecv.bundle.manifest import check_member_name
from edgecv.bundle.names import MANIFEST, SIGNATURE
from edgecv.errors import BundleError
from edgecv.utils.io import atomic_path


def bundle_members(bundle) -> list:
    """The files of an opened bundle that travel with it: the manifest, every listed file, the signature."""
    names = [MANIFEST] + sorted(bundle.manifest["files"])
    if (bundle.root / SIGNATURE).is_file():
        names.append(SIGNATURE)
    return names


def pack(bundle, path: str | os.PathLike) -> Path:
    """Write the opened ``bundle`` as a deterministic tar at ``path`` (atomically)."""
    with atomic_path(path) as tmp:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            for name in bundle_members(bundle):
                src = bundle.root / name if name in (MANIFEST, SIGNATURE) else bundle.path(name)
                data = src.read_bytes()
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
    return Path(path)


def unpack(archive: str | os.PathLike, dest: str | os.PathLike, max_bytes: int) -> Path:
    """Extract a bundle archive into the new folder ``dest``; BundleError for anything a bundle cannot hold."""
    dest = Path(dest)
    dest.mkdir(mode=0o755)
    total = 0
    try:
        with tarfile.open(archive, "r:") as tar:
            for m in tar:
                where = f"{archive}: member {m.name!r}"
                if not m.isreg():
                    raise BundleError(f"{where}: not a regular file (links and devices are refused)")
                check_member_name(m.name, where)
                total += m.size
                if total > max_bytes:
                    raise BundleError(f"{archive}: more than {max_bytes} bytes unpacked; refused")
                out = dest / m.name
                out.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
                with tar.extractfile(m) as src, open(out, "xb") as f:
                    f.write(src.read())
                os.chmod(out, 0o644)
    except (tarfile.TarError, EOFError) as e:
        raise BundleError(f"{archive}: not a bundle archive ({e})") from None
    except FileExistsError as e:
        raise BundleError(f"{archive}: member {os.path.basename(e.filename)!r} appears twice") from None
    return dest
