"""Bodies of the orders API: attribution, order intake, refunds and the settlement."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field, PlainValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from ...commerce.money import parse_cents
from .common import FIELD_ERROR, RequestBody, Rule, Slug
from .shows import Currency

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
ShopId = Annotated[str, Field(pattern=ID_PATTERN), Rule("must be 1-128 of A-Z a-z 0-9 _ . : - (the shop's own id)")]
MONEY_SCHEMA = {"type": "string", "pattern": r"^[0-9]+(\.[0-9]{1,2})?$",
                "description": "an amount with at most 2 decimals, as a string: \"9.90\" (a JSON number is taken too)"}


def _amount(positive: bool) -> Any:
    def cents(value: object) -> int:
        try:
            return parse_cents(value, positive=positive)
        except ValueError as exc:
            raise PydanticCustomError(FIELD_ERROR, str(exc)) from None
    return cents


Amount = Annotated[int, PlainValidator(_amount(False)), WithJsonSchema(MONEY_SCHEMA)]  # in cents
PositiveAmount = Annotated[int, PlainValidator(_amount(True)), WithJsonSchema(MONEY_SCHEMA)]


class OrderItem(RequestBody):
    product: Slug = Field(description="a product of the show's shelf")
    quantity: Annotated[int, Field(gt=0, le=1_000_000), Rule("must be an integer from 1 to 1000000")]
    unit_price: Amount = Field(description="what the buyer paid for one, after discounts")


class NewOrder(RequestBody):
    """A paid order from the brand's shop."""

    order_id: ShopId
    attribution: Annotated[str, Field(max_length=4096), Rule("must be the lc_attr token of the product link")] | None \
        = Field(description="the lc_attr the product link carried; null: the buyer came another way (HQ)")
    items: Annotated[list[OrderItem], Field(min_length=1, max_length=500),
                     Rule("must be a list of 1 to 500 items")]
    currency: Currency

    def normalised(self) -> dict:
        """The request as compared with a retry of it: amounts in cents."""
        return {"order_id": self.order_id, "attribution": self.attribution, "currency": self.currency,
                "items": [[i.product, i.quantity, i.unit_price] for i in self.items]}


class NewRefund(RequestBody):
    """Money given back on an order."""

    refund_id: ShopId
    amount: PositiveAmount


# -- answers -----------------------------------------------------------------------------------
class AttributionToken(BaseModel):
    attribution: str = Field(description="add to the product link as lc_attr; the shop sends it back with the order")
    expires_at: int


class Commission(BaseModel):
    distributor: str
    sharer: str


class OrderAnswer(BaseModel):
    """The order as taken; the same again for a retried intake."""

    order_id: str
    room: str = Field(description="the room credited: 'hq' or a distributor")
    sharer: str | None
    amount: str
    commission: Commission
    currency: str
    state: str


class RefundView(BaseModel):
    refund_id: str
    amount: str
    commission_reversed: Commission
    created_at: float


class OrderView(OrderAnswer):
    """The order now, with its lines and refunds."""

    viewer_id: str | None
    created_at: float
    items: list[dict[str, Any]]
    refunded: str
    commission_net: Commission
    refunds: list[RefundView]


class RefundAnswer(RefundView):
    order: OrderView


class SalesFigures(BaseModel):
    orders: int
    gmv: str
    refunds: str
    net: str
    commission: str = Field(description="the distributor's, net of refunds")
    sharer_commission: str


class SharerFigures(BaseModel):
    room: str
    orders: int
    gmv: str
    refunds: str
    commission: str


class Settlement(BaseModel):
    """Who sold what and earned what; the totals are the sum of the rooms."""

    currency: str
    rooms: dict[str, SalesFigures]
    sharers: dict[str, SharerFigures]
    totals: SalesFigures
