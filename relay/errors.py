"""Errors a request can meet, with the HTTP status and code they answer with (relay/http/middleware.py
turns them into {"error": code, "message": text})."""

from __future__ import annotations


class ApiError(Exception):
    """An error the client caused (or a state conflict), with its HTTP status."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


class NodeFull(ApiError):
    """This node has its maximum of viewers: the same request goes to `base_url` (307)."""

    def __init__(self, base_url: str) -> None:
        super().__init__(307, "node_full", f"this node is full; send the offer to {base_url}")
        self.base_url = base_url


class StoreUnavailable(ApiError):
    """The store could not be reached or could not commit; nothing was changed. 503."""

    def __init__(self, what: str, detail: object) -> None:
        super().__init__(503, "store_unavailable", f"the {what} is unavailable, try again: {detail}",
                         {"Retry-After": "1"})


def invalid_field(field: str, message: str) -> ApiError:
    """422 naming the field that was wrong."""
    return ApiError(422, "invalid_field", f"{field!r} {message}")


def show_exists(show_id: str) -> ApiError:
    """409: the id is taken (the catalog checks first; a store refuses a second create too)."""
    return ApiError(409, "show_exists", f"a show with id {show_id!r} already exists")


def show_not_found(show_id: str) -> ApiError:
    return ApiError(404, "show_not_found", f"no show {show_id!r}")


def mirror_exists(distributor: str) -> ApiError:
    return ApiError(409, "mirror_exists", f"distributor {distributor!r} already has a room in this show")


def too_many_restreams(limit: int) -> ApiError:
    return ApiError(409, "too_many_restreams", f"a show has at most {limit} restream targets; remove one first")


def restream_not_found(restream_id: str) -> ApiError:
    return ApiError(404, "restream_not_found", f"this show has no restream target {restream_id!r}")
