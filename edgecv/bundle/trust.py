"""Trust: which public keys this machine trusts, and the check of a bundle's signature against them.

The signature is ``model.sig`` inside the bundle, in the OpenSSF model-signing format (a Sigstore bundle carrying
a DSSE-wrapped in-toto statement of every file's digest), made with an ECDSA key. Keys are trusted with
``--trust KEY``, ``EDGECV_TRUST`` (files or folders, separated by ':') or PEM files in
``$XDG_CONFIG_HOME/edgecv/trusted-keys/``. Trust fails closed: a source that is configured but cannot be read, or
yields no usable key, is an error naming it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List

from edgecv.bundle.names import SIGNATURE
from edgecv.errors import SignatureError
from edgecv.utils.io import NotASmallFile, read_small


def trusted_keys_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "edgecv" / "trusted-keys"


_COMMAND_TRUST: List[str] = []  # --trust of the command being run (set per invocation, never inherited)


def set_command_trust(keys, add: bool = False) -> None:
    """The ``--trust`` keys of this command invocation (replacing any earlier invocation's in this process;
    ``add``: a subcommand's own ``--trust`` beside the group's)."""
    _COMMAND_TRUST[:] = (_COMMAND_TRUST if add else []) + [os.fspath(k) for k in keys or ()]


KEY_SUFFIXES = (".pem", ".pub")


def configured_trust() -> List[Path]:
    """Public keys to trust: ``--trust``, ``EDGECV_TRUST`` (files or folders, separated by ':') and the
    trusted-keys folder. Trust fails closed: a source that is configured but cannot be read, or yields no usable
    key (an empty folder, keys with another suffix, broken links, a file that is not a PEM public key), is a
    SignatureError naming it, never "no key trusted here"."""
    out: List[Path] = []
    items = [("--trust", k) for k in _COMMAND_TRUST]
    items += [("EDGECV_TRUST", k) for k in os.environ.get("EDGECV_TRUST", "").split(os.pathsep) if k]
    folder = trusted_keys_dir()
    if os.path.lexists(folder):
        items.append(("the trusted-keys folder", os.fspath(folder)))
    for origin, item in items:
        out += _keys_from(Path(item), origin)
    return out


def _keys_from(p: Path, origin: str) -> List[Path]:
    """The usable keys of one trust source (a key file or a folder of ``.pem``/``.pub`` files)."""
    if not os.path.lexists(p):
        raise SignatureError(f"{p}: trusted key not found ({origin})")
    if not p.exists():
        raise SignatureError(f"{p}: a broken link ({origin}); trust fails closed")
    if not p.is_dir():
        return [_usable_key(p, origin)]
    try:
        entries = sorted(p.iterdir())
    except OSError as e:
        raise SignatureError(f"{p}: cannot list the trusted keys ({e.strerror}; {origin})") from None
    keys = [_usable_key(q, origin) for q in entries if q.suffix in KEY_SUFFIXES]
    if not keys:
        found = ", ".join(q.name for q in entries[:5]) + (" ..." if len(entries) > 5 else "")
        raise SignatureError(f"{p}: holds no trusted key ({origin}: {'found ' + found if entries else 'empty'}; "
                             f"keys are PEM public keys named *{' or *'.join(KEY_SUFFIXES)}); trust fails closed")
    return keys


def _usable_key(q: Path, origin: str) -> Path:
    """``q`` when it is a readable PEM public key, else a SignatureError naming it."""
    try:
        data = read_small(q) if q.exists() else None
    except NotASmallFile as e:
        raise SignatureError(f"{q}: not a public key file ({e}; {origin}); trust fails closed") from None
    except OSError as e:
        raise SignatureError(f"{q}: cannot read this trusted key ({e.strerror}; {origin})") from None
    if data is None:
        why = "a broken link" if q.is_symlink() else "not found"
        raise SignatureError(f"{q}: {why} ({origin}); trust fails closed")
    try:
        from cryptography.hazmat.primitives.serialization import load_pem_public_key
    except ImportError:
        raise SignatureError(f"{q}: a trusted key is configured, but signatures cannot be checked without "
                             "pip install 'edgecv[deploy]'") from None
    try:
        load_pem_public_key(data)
    except (ValueError, TypeError) as e:
        raise SignatureError(f"{q}: not a PEM public key ({origin}: {str(e).splitlines()[0][:120]})") from None
    return q


def hashing_config():
    """What a signature covers: every file of the bundle but the signature itself (signing and verifying agree)."""
    import model_signing

    return model_signing.hashing.Config().set_ignored_paths(paths=[Path(SIGNATURE)], ignore_git_paths=True)


def verify_signature(bundle: str | os.PathLike, keys: List[Path]) -> Path:
    """The trusted key that verifies ``bundle``'s signature; SignatureError when none does."""
    try:
        import model_signing
    except ImportError:
        raise SignatureError("a trusted key is configured, but model-signing is not installed to check signatures: "
                             "pip install 'edgecv[deploy]'") from None

    root = Path(os.fsdecode(bundle))
    sig = root / SIGNATURE
    if sig.is_symlink() or not sig.is_file():
        raise SignatureError(f"{root}: not signed ({SIGNATURE} missing) but a trusted key is configured; "
                             f"sign it with `edgecv sign {root} --key KEY`")
    problems = []
    for key in keys:
        try:
            model_signing.verifying.Config().use_elliptic_key_verifier(public_key=key) \
                .set_hashing_config(hashing_config()).verify(root, sig)
            return key
        except Exception as e:  # the library raises ValueError and cryptography's InvalidSignature, among others
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            problems.append(f"{key.name}: {msg[:200]}")
    raise SignatureError(f"{root}: signature does not verify with any trusted key ({'; '.join(problems)})")
