"""``edgecv sign``: sign a bundle in the OpenSSF model-signing format with an ECDSA key, so that
``model_signing verify key`` accepts an edgecv-signed bundle and edgecv accepts one the reference tool signed.
The signature (``model.sig``) is excluded from what it signs. Trust and verification: edgecv.bundle.trust.
"""
from __future__ import annotations

import os
from pathlib import Path

from edgecv.bundle.names import SIGNATURE
from edgecv.bundle.trust import hashing_config
from edgecv.errors import SignatureError


def sign_bundle(bundle: str | os.PathLike, private_key: str | os.PathLike, password: str | None = None) -> Path:
    """Sign every file of a verified bundle with an EC private key (PEM); returns the signature's path."""
    from edgecv.bundle.reader import open_bundle
    from edgecv.bundle.slots import is_install_root
    from edgecv.utils.io import TMP_TAG, NotASmallFile, file_mode, read_small

    if is_install_root(Path(os.fsdecode(bundle))):
        raise SignatureError(f"{bundle}: is an install root; sign the bundle on the workstation, before installing it")
    b = open_bundle(bundle, trust=False)  # integrity first: never sign a damaged bundle
    key = Path(private_key)
    try:
        pem = read_small(key)  # model-signing reads the key whole: a device or a huge file must not get that far
    except NotASmallFile as e:
        raise SignatureError(f"{key}: not a private key file ({e})") from None
    except FileNotFoundError:
        raise SignatureError(f"{key}: private key not found") from None
    except OSError as e:
        raise SignatureError(f"{key}: cannot read the private key ({e.strerror})") from None
    kind = _other_key_kind(pem, password)
    if kind:
        raise SignatureError(f"{key}: an {kind} private key; model-signing needs an ECDSA key (P-256/P-384): "
                             "openssl ecparam -name prime256v1 -genkey -noout -out key.pem")
    import model_signing

    sig = b.root / SIGNATURE
    # written beside the bundle, not in it (the signature covers every file in the bundle), then renamed in
    tmp = b.root.parent / f".{b.root.name}.sig{TMP_TAG}{os.getpid()}"
    try:
        model_signing.signing.Config().use_elliptic_key_signer(private_key=key, password=password) \
            .set_hashing_config(hashing_config()).sign(b.root, tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, sig)
    except Exception as e:  # wrong key type (RSA, Ed25519), bad password, unreadable PEM: many exception types
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SignatureError(f"{key}: cannot sign with this key ({msg[:200]}); model-signing needs an ECDSA key "
                             "(P-256/P-384): openssl ecparam -name prime256v1 -genkey -noout -out key.pem") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return sig


def _other_key_kind(pem: bytes, password: str | None) -> str | None:
    """The algorithm of a private key that is not ECDSA ("RSA", "Ed25519"), else None (also when it does not
    load here: model-signing's own error then says why)."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        priv = load_pem_private_key(pem, password=password.encode() if password else None)
    except (ValueError, TypeError):
        return None
    if isinstance(priv, ec.EllipticCurvePrivateKey):
        return None
    return type(priv).__name__.removeprefix("_").replace("PrivateKey", "") or "unsupported"

