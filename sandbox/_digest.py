"""SHA-256 without ``import hashlib`` for small data: the digests of the manifest and the policy.

``hashlib`` loads OpenSSL's libcrypto at import (~3 ms of every ``tv-sandbox run`` that exports a
few small files); the interpreter's built-in SHA-256 costs nothing to load. For large files
OpenSSL's (several times faster with the CPU's SHA extensions) is worth its import. Both give the
same digests.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from _hashlib import HASH

#: From this size on, OpenSSL's SHA-256 (several times faster on large files, with SHA
#: extensions) is worth its import (~3 ms: libcrypto); below it, the interpreter's built-in one.
OPENSSL_FROM = 1 << 20


def sha256(size: int = 0) -> HASH:
    """A SHA-256 object for data of about ``size`` bytes (``hashlib.sha256()``'s digests, without
    importing ``hashlib`` for the small files most runs export)."""
    if size < OPENSSL_FROM:
        try:
            from _sha256 import sha256 as small  # type: ignore[import-not-found]  # Python 3.11
        except ImportError:  # pragma: no cover - 3.12 renamed it
            try:
                from _sha2 import sha256 as small  # type: ignore[import-not-found]
            except ImportError:
                from hashlib import sha256 as small
        return small()  # type: ignore[no-any-return]
    try:
        from _hashlib import openssl_sha256

        return openssl_sha256()
    except ImportError:  # pragma: no cover - an interpreter without OpenSSL
        from hashlib import sha256 as fallback

        return fallback()


def sha256_hex(data: bytes) -> str:
    """``hashlib.sha256(data).hexdigest()``."""
    h = sha256(len(data))
    h.update(data)
    return h.hexdigest()
