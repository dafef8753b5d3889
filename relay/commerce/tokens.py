"""Signed viewer tokens: who a viewer is, which room brought them, who shared the link."""

from __future__ import annotations

import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

import jwt

from ..errors import ApiError, StoreUnavailable

ALGORITHM = "HS256"
TOKEN_TTL_S = 7 * 86400


@dataclass(frozen=True)
class ViewerIdentity:
    show_id: str
    room: str  # "hq" or the distributor whose room the viewer entered through
    viewer_id: str
    sharer: str | None  # the latest sharer
    issued_at: float = field(default=0.0, compare=False)  # when the token was made (0: not yet)
    name: str | None = field(default=None, compare=False)  # the display name it chose, if any


def load_secret(configured: str, data_dir: Path) -> str:
    """The signing secret from config, else the one kept in the data dir, else a new one."""
    if configured:
        return configured
    path = data_dir / "token_secret"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret + "\n")
    return secret


SHOPPER_ID_PATTERN = r"[A-Za-z0-9_.:@-]{1,128}"
_SHOPPER_ID = re.compile(SHOPPER_ID_PATTERN)


def shopper_viewer_id(shopper_id: object) -> str:
    """The viewer id of a brand's user: the same in every room and on every device, so coupon
    limits count per shopper."""
    if not isinstance(shopper_id, str) or not _SHOPPER_ID.fullmatch(shopper_id):
        raise ApiError(422, "invalid_field", "'shopper_id' must be 1-128 of A-Z a-z 0-9 _ . : @ -")
    return "s-" + shopper_id


def verify_shopper_token(token: object, secret: str, show_id: str) -> str:
    """The shopper id in a token the brand signed (HS256 with [auth] shopper_secret) for this
    show: {"sub": shopper id, "show": show id, "exp": ...}."""
    if not secret:
        raise ApiError(422, "invalid_field", "this server takes no shopper tokens: [auth] shopper_secret is not set")
    if not isinstance(token, str):
        raise ApiError(422, "invalid_field", "'shopper_token' must be a string")
    try:
        claims = jwt.decode(token, secret, algorithms=[ALGORITHM], options={"require": ["sub", "show", "exp"]})
    except jwt.ExpiredSignatureError as exc:
        raise ApiError(401, "token_expired", "the shopper token has expired") from exc
    except jwt.InvalidTokenError as exc:
        raise ApiError(401, "unauthorized", "invalid shopper token") from exc
    if claims["show"] != show_id:
        raise ApiError(401, "unauthorized", "the shopper token is for another show")
    return claims["sub"]


class ViewerTokens:
    """Signs and checks viewer and replay tokens. Without a secret yet (the one shared through
    Redis is not read yet) every call answers 503 and nothing else is held up."""

    def __init__(self, secret: str | None, ttl_s: float = TOKEN_TTL_S) -> None:
        self._secret_value = secret
        self._ttl = ttl_s

    def use_secret(self, secret: str) -> None:
        """Sign and check with `secret` from now on (the one shared through the Redis store)."""
        self._secret_value = secret

    @property
    def _secret(self) -> str:
        if self._secret_value is None:
            raise StoreUnavailable("token secret (kept in the Redis store)", "not read yet")
        return self._secret_value

    def issue(self, identity: ViewerIdentity) -> str:
        now = int(time.time())
        # "t": when it was made, finer than iat, to tell it from a show made later with the same id
        claims = {"sub": identity.viewer_id, "show": identity.show_id, "room": identity.room,
                  "iat": now, "t": time.time(), "exp": now + int(self._ttl)}
        if identity.sharer:
            claims["ref"] = identity.sharer
        if identity.name:
            claims["name"] = identity.name
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def issue_replay(self, show_id: str, ttl_s: float) -> tuple[str, int]:
        """A token that opens a private replay's files until it expires; returns (token, exp)."""
        now = int(time.time())
        exp = int(now + ttl_s)
        claims = {"scope": "replay", "show": show_id, "iat": now, "t": time.time(), "exp": exp}
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM), exp

    def issue_attribution(self, identity: ViewerIdentity, ttl_s: float) -> tuple[str, int]:
        """Who brought a buyer (show, room, sharer, viewer), for the shop to send back with the
        order; returns (token, exp)."""
        now = int(time.time())
        exp = int(now + ttl_s)
        claims = {"scope": "attribution", "show": identity.show_id, "room": identity.room,
                  "sub": identity.viewer_id, "iat": now, "t": time.time(), "exp": exp}
        if identity.sharer:
            claims["ref"] = identity.sharer
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM), exp

    def verify_attribution(self, token: str, show_id: str, show_created_at: float) -> ViewerIdentity:
        """The identity an attribution of this show binds; 422 invalid_attribution when it is
        forged, expired, of another show or older than the show."""
        try:
            claims = jwt.decode(token, self._secret, algorithms=[ALGORITHM],
                                options={"require": ["scope", "show", "room", "sub", "t", "exp"]})
        except jwt.ExpiredSignatureError as exc:
            raise ApiError(422, "invalid_attribution", "'attribution' has expired") from exc
        except jwt.InvalidTokenError as exc:
            raise ApiError(422, "invalid_attribution", "'attribution' is not a valid attribution token") from exc
        if claims["scope"] != "attribution" or claims["show"] != show_id or claims["t"] < show_created_at:
            raise ApiError(422, "invalid_attribution", "'attribution' is for another show")
        return ViewerIdentity(show_id, claims["room"], claims["sub"], claims.get("ref"), claims["t"])

    def verify_replay(self, token: str, show_id: str, show_created_at: float) -> None:
        """Valid for this show, unexpired, and made after the show was (a deleted show's links
        never open a later show with the same id)."""
        try:
            claims = jwt.decode(token, self._secret, algorithms=[ALGORITHM],
                                options={"require": ["scope", "t", "exp"]})
        except jwt.ExpiredSignatureError as exc:
            raise ApiError(401, "link_expired", "this replay link has expired") from exc
        except jwt.InvalidTokenError as exc:
            raise ApiError(401, "unauthorized", "invalid replay link") from exc
        if claims["scope"] != "replay" or claims.get("show") != show_id or claims["t"] < show_created_at:
            raise ApiError(401, "unauthorized", "this link is for another replay")

    def verify(self, token: str | None, show_id: str, show_created_at: float) -> ViewerIdentity:
        """The identity in a valid, unexpired token for `show_id`; 401 otherwise."""
        if not token:
            raise ApiError(401, "unauthorized", "missing viewer token: send Authorization: Bearer <token>",
                           {"WWW-Authenticate": "Bearer"})
        try:
            claims = jwt.decode(token, self._secret, algorithms=[ALGORITHM],
                                options={"require": ["sub", "show", "room", "t", "exp"]})
            if claims.get("scope", "viewer") != "viewer":
                raise jwt.InvalidTokenError("not a viewer token")
        except jwt.ExpiredSignatureError as exc:
            raise ApiError(401, "token_expired", "viewer token has expired; get a new one") from exc
        except jwt.InvalidTokenError as exc:
            raise ApiError(401, "unauthorized", "invalid viewer token") from exc
        if claims["show"] != show_id or claims["t"] < show_created_at:
            raise ApiError(401, "unauthorized", "viewer token is for another show")
        name = claims.get("name")
        return ViewerIdentity(claims["show"], claims["room"], claims["sub"], claims.get("ref"), claims["t"],
                              name if isinstance(name, str) else None)
