"""Bodies of the commerce API: viewers, the shelf and its card, flash coupons and claims."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainValidator, WithJsonSchema, model_validator
from pydantic_core import PydanticCustomError

from ...commerce.coupons import Coupon
from ...commerce.products import ProductEdit, RoomPrice
from ...commerce.tokens import SHOPPER_ID_PATTERN
from .common import FIELD_ERROR, Rate, RequestBody, Rule, Slug, Title, broken

MAX_PRICE_CENTS = 100_000_000_00
REF_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,130}$"  # a slug or a viewer id ("s-" + a shopper id)
_AMOUNT_RULE = "must be a non-negative amount with at most 2 decimals"


def _cents(value: object) -> int:
    """A price as a JSON number or decimal string with at most 2 decimals, in cents."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise PydanticCustomError(FIELD_ERROR, "must be a number")
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise PydanticCustomError(FIELD_ERROR, "must be a number") from None
    if not amount.is_finite() or amount < 0:
        raise PydanticCustomError(FIELD_ERROR, _AMOUNT_RULE)
    if amount * 100 > MAX_PRICE_CENTS:  # before quantize, which cannot hold 1e400
        raise PydanticCustomError(FIELD_ERROR, "is too large")
    if amount != amount.quantize(Decimal("0.01")):
        raise PydanticCustomError(FIELD_ERROR, _AMOUNT_RULE)
    return int(amount * 100)


Price = Annotated[int, PlainValidator(_cents), Rule("must be a number"), WithJsonSchema({
    "anyOf": [{"type": "number", "minimum": 0, "maximum": MAX_PRICE_CENTS // 100},
              {"type": "string", "pattern": r"^[0-9]+(\.[0-9]{1,2})?$"}],
    "description": "an amount in the show's currency, at most 2 decimals: 19.9 or \"19.90\""})]
Url = Annotated[str, Field(pattern=r"^(?:https?://\S{1,2000})?$", description="an http(s) URL, or empty"),
                Rule("must be an http(s) URL")]
Position = Annotated[int, Field(ge=0, le=10_000), Rule("must be an integer from 0 to 10000")]


def _left_as_is(description: str) -> Any:
    """A field of a change that may be left out (then it stays as it is) but is never null: no
    default in the schema, so null fails its type."""
    return Field(default_factory=lambda: None, description=description)


# -- viewers --------------------------------------------------------------------------------
class NewViewer(RequestBody):
    """A viewer to register (or, with a viewer token, the latest sharer to record)."""

    room: Annotated[str, Rule("must be 'hq' or a distributor id")] = Field(
        "hq", description="the room the viewer entered through: kept for good")
    ref: Annotated[str, Field(pattern=REF_PATTERN), Rule("must be a distributor or viewer id")] | None = Field(
        None, description="who shared the link: a distributor, or a viewer (its viewer_id: an invite)")
    shopper_id: Annotated[str, Field(pattern=f"^{SHOPPER_ID_PATTERN}$"),
                          Rule("must be 1-128 of A-Z a-z 0-9 _ . : @ -")] | None = Field(
        None, description="the brand's own user id (admin key only)")
    shopper_token: Annotated[str, Rule("must be a string")] | None = Field(
        None, description="a token the brand signed for this show: HS256 {sub, show, exp}")
    name: Annotated[str, AfterValidator(str.strip), Field(min_length=1, max_length=40),
                    Rule("must be 1-40 characters (after trimming)")] | None = Field(
        None, description="the name the viewer's comments show (carried in its token); else 'viewer' and a short hash")


class ViewerToken(BaseModel):
    """A viewer's identity and its signed token (Bearer token of claims, WHEP and events)."""

    viewer_id: str
    room: str
    token: str


# -- the shelf ------------------------------------------------------------------------------
class RoomOverride(BaseModel):
    """How one mirror room shows a product."""

    model_config = ConfigDict(strict=True, extra="forbid")

    price_cents: Price | None = Field(None, alias="price", description="the room's own price; null: the show's")
    hidden: Annotated[bool, Rule("must be true or false")] = False


RoomOverrides = Annotated[
    dict[str, Annotated[RoomOverride, Rule('entries must be {"price": number|null, "hidden": bool}')] | None],
    Rule("must be an object of distributor -> {price, hidden}")]


class ProductChange(RequestBody):
    """Fields of a product to change; those left out stay as they are."""

    title: Title = _left_as_is("the product's name")
    price_cents: Price = Field(default_factory=lambda: None, alias="price")  # left as is when left out
    image_url: Url = _left_as_is("the product's picture")
    link: Url = _left_as_is("where to buy it")
    position: Position = _left_as_is("its place on the shelf, 0 first")
    rooms: RoomOverrides = _left_as_is("per mirror room: its price or hidden; null drops the room's override")
    commission_rate: Rate | None = Field(None, description="replaces the distributor's rate for this product; "
                                                           "null: the distributor's rate applies")

    def edit(self) -> ProductEdit:
        """The change for the shelf: only the fields the request gave."""
        given = {name: getattr(self, name) for name in self.model_fields_set - {"id"}}  # the id is no change
        if "commission_rate" in given and self.commission_rate is None:
            given["commission_rate"] = ""  # null: back to the distributor's rate
        if self.rooms is not None:
            given["rooms"] = {room: None if o is None else RoomPrice(o.price_cents, o.hidden)
                              for room, o in self.rooms.items()}
        return ProductEdit(**given)


class NewProduct(ProductChange):
    """A product to put on the shelf."""

    id: Slug | None = Field(None, description="the product's id; a random one when absent")
    title: Title
    price_cents: Price = Field(alias="price")


class RoomPriceView(BaseModel):
    price: float | None
    hidden: bool


class ProductView(BaseModel):
    """A product; `rooms` (every room's price and visibility) only for the admin."""

    id: str
    title: str
    image_url: str
    link: str
    position: int
    price: float
    rooms: dict[str, RoomPriceView] | None = None
    commission_rate: str | None = Field(None, description="the product's own rate (admin only)")


class ProductList(BaseModel):
    products: list[ProductView]
    pinned: str | None = Field(description="the product on the card now")


class Pinned(BaseModel):
    pinned: str | None


# -- coupons --------------------------------------------------------------------------------
Quantity = Annotated[int, Field(ge=1, le=10_000_000), Rule("must be an integer from 1 to 10000000")]
UnixTime = Annotated[float, Field(gt=0), Rule("must be a Unix time in seconds")]


class NewCoupon(RequestBody):
    """A flash coupon: a quantity over a time window (duration_s from its launch, or starts_at/ends_at)."""

    id: Slug | None = Field(None, description="the coupon's id; a random one when absent")
    title: Title
    quantity: Quantity
    per_viewer_limit: Quantity = Field(1, description="claims one viewer (or shopper) may make")
    duration_s: Annotated[float, Field(gt=0, le=86400), Rule("must be a number of seconds from 0 to 86400")] | None \
        = Field(None, description="how long it runs once launched (or from starts_at)")
    starts_at: UnixTime | None = None
    ends_at: UnixTime | None = None
    room_caps: Annotated[dict[str, Annotated[int, Field(ge=0), Rule("must be a non-negative integer")]],
                         Rule("must be an object of distributor -> count")] = Field(
        default_factory=dict, description="at most this many claims through a room")
    kind: Annotated[Literal["flash", "invite"], Rule("must be 'flash' or 'invite'")] = Field(
        "flash", description="'invite': a viewer claims once invites_required viewers registered through its "
                             "share link (?ref=<its viewer_id>)")
    invites_required: Annotated[int, Field(ge=1, le=1000), Rule("must be an integer from 1 to 1000")] | None = Field(
        None, description="with kind 'invite': how many invitees a viewer needs")

    @model_validator(mode="after")
    def _consistent(self) -> "NewCoupon":
        if self.kind == "invite" and self.invites_required is None:
            raise broken("invites_required", "is required for an invite coupon")
        if self.kind == "flash" and self.invites_required is not None:
            raise broken("invites_required", "is only for kind 'invite'")
        if self.per_viewer_limit > self.quantity:
            raise broken("per_viewer_limit", f"must be an integer from 1 to {self.quantity}")
        if self.duration_s is not None and self.ends_at is not None:
            raise broken("duration_s", "cannot be given with 'ends_at'")
        if self.duration_s is None and self.ends_at is None:
            raise broken("duration_s", "or 'ends_at' is required: a flash coupon has a time window")
        if self.starts_at is not None and self.ends_at is not None and self.ends_at <= self.starts_at:
            raise broken("ends_at", "must be after 'starts_at'")
        if sum(self.room_caps.values()) > self.quantity:
            raise broken("room_caps", f"add up to {sum(self.room_caps.values())}, more than the quantity "
                                      f"{self.quantity}")
        return self

    def coupon(self, show_id: str) -> Coupon:
        """The draft coupon (its end fixed now when it starts at a set time)."""
        ends_at = self.ends_at
        if self.duration_s is not None and self.starts_at is not None:
            ends_at = self.starts_at + self.duration_s
        return Coupon(show_id, self.id, self.title, self.quantity, self.per_viewer_limit, self.duration_s,
                      self.starts_at, ends_at, dict(self.room_caps), "draft", kind=self.kind,
                      invites_required=self.invites_required or 0)


class CouponView(BaseModel):
    """A coupon; `room_caps` and `rooms` (claims per room) as the admin sees it."""

    id: str
    title: str
    quantity: int
    per_viewer_limit: int
    duration_s: float | None
    starts_at: float | None
    ends_at: float | None
    state: Literal["draft", "scheduled", "live", "ended"]
    claimed: int
    remaining: int
    room_caps: dict[str, int]
    rooms: dict[str, int] = Field(description="claims through each room")
    kind: Literal["flash", "invite"]
    invites_required: int | None = None


class CouponList(BaseModel):
    coupons: list[CouponView]


class ClaimAnswer(BaseModel):
    """The answer to a claim; the same again for a retried Idempotency-Key."""

    result: Literal["claimed", "already_claimed", "sold_out", "room_cap_reached", "not_started", "ended",
                    "needs_invites"]
    remaining: int | None = Field(None, description="coupons left for the viewer's room (not with needs_invites)")
    invites: int | None = Field(None, description="with needs_invites: the viewer's invitees so far")
    invites_required: int | None = Field(None, description="with needs_invites: how many it needs")
