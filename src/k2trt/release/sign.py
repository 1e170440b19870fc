"""Signing with OpenSSF model-signing (PyPI `model-signing`), offline with a local EC key.

The signature (`release.sig`, a Sigstore bundle whose DSSE payload is an in-toto statement of
every file's sha256, predicate `https://model_signing/signature/v1.0`) covers every file of
the release directory but itself; it records that one ignored path relative to the release,
so a release verifies wherever it is copied. Keyless Sigstore signing (OIDC in CI) writes the
same kind of file: see the README's Releases section.

>>> priv, pub = keygen(Path("keys"))  # doctest: +SKIP
>>> sign_release(Path("releases/kimi-k2/1.0.0"), priv)  # doctest: +SKIP
>>> verify_signature(Path("releases/kimi-k2/1.0.0"), pub)  # doctest: +SKIP
[]
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from k2trt.errors import K2Error
from k2trt.fsutil import write_text_atomic

SIGNATURE = "release.sig"
PRIVATE_KEY = "release-key.pem"
PUBLIC_KEY = "release-key.pub.pem"


def _hashing() -> Any:
    import model_signing

    config = model_signing.hashing.Config()  # type: ignore[no-untyped-call]
    return config.set_ignored_paths(paths=[SIGNATURE])


def keygen(out: Path, force: bool = False) -> tuple[Path, Path]:
    """A new NIST P-256 key pair: OUT/release-key.pem (private, mode 0600) and
    OUT/release-key.pub.pem. Refuses to overwrite a key without `force`."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private, public = out / PRIVATE_KEY, out / PUBLIC_KEY
    for path in (private, public):
        if path.exists() and not force:
            raise K2Error("key already exists (use --force to replace it)", path=path)
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_text_atomic(private, pem.decode("ascii"))
    private.chmod(0o600)
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    write_text_atomic(public, pub.decode("ascii"))
    return private, public


def sign_release(release: Path, private_key: Path) -> Path:
    """Write RELEASE/release.sig, signed with `private_key` (EC, PEM)."""
    import model_signing

    if not private_key.is_file():
        raise K2Error("signing key not found", path=private_key)
    config = model_signing.signing.Config()  # type: ignore[no-untyped-call]
    try:
        config.use_elliptic_key_signer(private_key=private_key)
    except (ValueError, TypeError) as exc:
        raise K2Error(f"not an elliptic-curve private key in PEM: {exc}", path=private_key) from exc
    config.set_hashing_config(_hashing()).sign(release, release / SIGNATURE)
    return release / SIGNATURE


def verify_signature(release: Path, public_key: Path) -> list[str]:
    """One line per problem (signature unreadable or by another key, files changed, added or
    missing since signing); empty when the signature holds."""
    import model_signing

    sig = release / SIGNATURE
    if not sig.is_file():
        return [f"{sig}: no signature (build the release with --sign-key)"]
    if not public_key.is_file():
        raise K2Error("public key not found", path=public_key)
    config = model_signing.verifying.Config()  # type: ignore[no-untyped-call]
    config.use_elliptic_key_verifier(public_key=public_key)
    try:
        config.set_hashing_config(_hashing()).verify(release, sig)
    except ValueError as exc:
        return [f"{sig}: {line}" for line in describe(str(exc))]
    except Exception as exc:  # a malformed bundle fails deep inside sigstore's parsers
        return [f"{sig}: unreadable signature ({type(exc).__name__}: {exc})"]
    return []


# The message is a Python list's repr: an item holding both quote kinds has \' inside.
_HASH_MISMATCH = re.compile(r"Hash mismatch for \\?'([^'\\]+)\\?'")
_FILE_LIST = re.compile(r"(Extra files found in model|Missing files in model)[^:]*: ([^\"'\]]+)")


def describe(message: str) -> list[str]:
    """model-signing's verification error as short lines naming the files.

    >>> describe("Signature mismatch: [\\"Hash mismatch for 'a.txt': Expected ...\\"]")
    ['a.txt changed since it was signed']
    """
    lines = [f"{name} changed since it was signed" for name in _HASH_MISMATCH.findall(message)]
    for kind, names in _FILE_LIST.findall(message):
        what = "added since signing" if kind.startswith("Extra") else "missing since signing"
        lines += [f"{n.strip()} {what}" for n in names.split(",") if n.strip()]
    if not lines:
        lines.append(f"signature does not verify: {' '.join(message.split())[:300]}")
    return lines
