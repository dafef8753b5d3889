"""Bodies of the restream API: a show's targets on other platforms."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field
from pydantic_core import PydanticCustomError

from ...restream.url import MAX_URL_LENGTH, BadUrl, parse
from .common import FIELD_ERROR, RequestBody, Rule, Title


def _target_url(value: str) -> str:
    try:
        parse(value)
    except BadUrl as exc:  # (the rule, never the URL: it holds a stream key)
        raise PydanticCustomError(FIELD_ERROR, "{rule}", {"rule": str(exc)}) from None
    return value


TargetUrl = Annotated[str, Field(max_length=MAX_URL_LENGTH), AfterValidator(_target_url),
                      Rule(f"must be an rtmp:// or rtmps:// URL of at most {MAX_URL_LENGTH} characters: "
                           "rtmp://host/app/stream-key")]


class NewRestream(RequestBody):
    """A platform to push the show to while it is live."""

    name: Title = Field(description="what the operator calls it, e.g. 'YouTube'")
    url: TargetUrl = Field(description="the platform's RTMP(S) URL with its stream key as the last path segment; "
                                       "the key is a secret: never shown again, masked in every answer")


class RestreamView(BaseModel):
    """A restream target: its URL masked, its state on the node pushing the show."""

    id: str
    name: str
    url: str = Field(description="the URL with its stream key (and any query) as ****")
    state: Literal["waiting", "connecting", "live", "retrying", "failed"] = Field(
        description="waiting: the show is not live here; retrying: failed or dropped, connecting again after a "
                    "backoff (1, 2, 4 ... 30 s); failed: the show's media cannot go over RTMP")
    since: float = Field(description="when it entered its state")
    bytes_sent: int = Field(description="bytes sent to the platform while live here (all connections)")
    last_error: str | None = Field(description="why its last connection failed or ended (no stream key in it)")
    created_at: float


class RestreamList(BaseModel):
    restreams: list[RestreamView]
