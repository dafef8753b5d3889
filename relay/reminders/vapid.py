"""The relay's VAPID identity (RFC 8292): a P-256 key pair whose public half browsers subscribe
with, and the signed JWT each push request carries."""

from __future__ import annotations

import base64
import json
import time
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

JWT_LIFETIME_S = 12 * 3600  # RFC 8292: at most 24 h; a token is reused for half of its life
REUSE_S = JWT_LIFETIME_S / 2


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def new_private_pem() -> str:
    """A new P-256 private key, PKCS#8 PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def origin(url: str) -> str:
    """The push service's origin, the JWT's audience: scheme://host[:port]."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"


class VapidKeys:
    """Signs `Authorization: vapid t=<JWT>, k=<public key>` for a push service's origin."""

    def __init__(self, private_pem: str, subject: str) -> None:
        key = serialization.load_pem_private_key(private_pem.encode(), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
            raise ValueError("the VAPID key must be an EC P-256 private key")
        self._key = key
        self._subject = subject
        # The application server key of PushManager.subscribe(): the uncompressed point, base64url.
        self.public_key = b64url(key.public_key().public_bytes(serialization.Encoding.X962,
                                                               serialization.PublicFormat.UncompressedPoint))
        self._tokens: dict[str, tuple[float, str]] = {}  # audience -> (made at, header)

    def authorization(self, endpoint: str, now: float | None = None) -> str:
        """The header for a request to `endpoint` (one token per push service, reused a while)."""
        now = time.time() if now is None else now
        audience = origin(endpoint)
        made = self._tokens.get(audience)
        if made is None or now - made[0] > REUSE_S:
            made = (now, f"vapid t={self._jwt(audience, now)}, k={self.public_key}")
            self._tokens[audience] = made
        return made[1]

    def _jwt(self, audience: str, now: float) -> str:
        header = b64url(json.dumps({"typ": "JWT", "alg": "ES256"}, separators=(",", ":")).encode())
        claims = b64url(json.dumps({"aud": audience, "exp": int(now) + JWT_LIFETIME_S, "sub": self._subject},
                                   separators=(",", ":"), sort_keys=True).encode())
        signing_input = f"{header}.{claims}".encode()
        r, s = decode_dss_signature(self._key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        return f"{header}.{claims}.{b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"
