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
    from edgecv.utils.io import TMP_TAG, file_mode

    if is_install_root(Path(os.fsdecode(bundle))):
        raise SignatureError(f"{bundle}: is an install root; sign the bundle on the workstation, before installing it")
    b = open_bundle(bundle, trust=False)  # integrity first: never sign a damaged bundle
    key = Path(private_key)
    if not key.is_file():
        raise SignatureError(f"{key}: private key not found")
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


