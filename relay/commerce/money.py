"""Money and rates: exact amounts in integer cents, rates as decimals, rounding half-up to the cent."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Iterable

CENT = Decimal("0.01")
MAX_CENTS = 100_000_000_00  # one amount (a price, a line, a refund) never exceeds this
MAX_RATE_DECIMALS = 6


def parse_cents(value: object, *, positive: bool = False) -> int:
    """An amount given as a decimal string ("9.90") or a JSON number, in cents; ValueError with
    the rule it broke otherwise (negative, more than 2 decimals, too large, not a number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError("must be an amount such as \"9.90\"")
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError("must be an amount such as \"9.90\"") from None
    if not amount.is_finite() or amount < 0 or (positive and amount == 0):
        raise ValueError("must be a positive amount" if positive else "must not be negative")
    if amount * 100 > MAX_CENTS:
        raise ValueError("is too large")
    if amount != amount.quantize(CENT):
        raise ValueError("must have at most 2 decimals")
    return int(amount * 100)


def format_cents(cents: int) -> str:
    """12.30 for 1230 cents; -0.50 for -50."""
    sign = "-" if cents < 0 else ""
    whole, part = divmod(abs(cents), 100)
    return f"{sign}{whole}.{part:02d}"


def parse_rate(value: object) -> Decimal:
    """A commission rate from 0 to 1, as a string ("0.10") or a JSON number; ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError("must be a rate such as \"0.10\"")
    try:
        rate = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError("must be a rate such as \"0.10\"") from None
    if not rate.is_finite() or not 0 <= rate <= 1:
        raise ValueError("must be a rate from 0 to 1")
    if rate != rate.quantize(Decimal(1).scaleb(-MAX_RATE_DECIMALS)):
        raise ValueError(f"must have at most {MAX_RATE_DECIMALS} decimals")
    return rate


def rate_text(rate: Decimal) -> str:
    """How a rate is kept and shown: as it was given ("0.10" stays "0.10", 0.1 is "0.1")."""
    return format(rate, "f")


def commission_cents(amount_cents: int, rate: Decimal | str) -> int:
    """amount x rate, rounded half-up to the cent."""
    return int((Decimal(amount_cents) * Decimal(rate)).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def share_cents(total_cents: int, part: int, whole: int) -> int:
    """total x part / whole, rounded half-up to the cent, exactly (integers only)."""
    if whole <= 0:
        return 0
    return (2 * total_cents * part + whole) // (2 * whole)


def first_over_one(rate: str, others: Iterable[str]) -> str | None:
    """The first of `others` that, added to `rate`, makes more than 1 (a sale can't pay out more
    than it brought in); None when every pair fits."""
    return next((other for other in others if Decimal(rate) + Decimal(other) > 1), None)
