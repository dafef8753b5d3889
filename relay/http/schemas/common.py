"""What the request models share: field rules, the slug and text types, and turning a
validation error into the API's 422 naming the field."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainValidator, ValidationError, WithJsonSchema
from pydantic_core import PydanticCustomError, core_schema

from ...commerce.money import parse_rate, rate_text
from ...errors import ApiError, invalid_field

FIELD_ERROR = "invalid_field"  # the pydantic error type of a broken rule, and the API's error code
SLUG_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"  # pydantic's regex engine: $ is the very end, no newline before it
SLUG_RULE = "must be a slug: 1-64 of a-z, 0-9, '-', '_', starting with a letter or digit"


@dataclass(frozen=True)
class Rule:
    """What a field must be, as the 422 says it: any failure of the type it annotates (its own
    type and constraints) is reported with this sentence, unless a rule nested inside spoke."""

    text: str

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.no_info_wrap_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema, handler: Any) -> dict[str, Any]:
        described = handler(schema)
        if "$ref" not in described:  # a model's own schema is shared: its rule is said where it is used
            described.setdefault("description", self.text)
        return described

    def _check(self, value: Any, inner: Any) -> Any:
        try:
            return inner(value)
        except ValidationError as exc:
            if all(e["type"] == FIELD_ERROR for e in exc.errors()):
                raise  # a nested field's own rule names the problem better
            raise PydanticCustomError(FIELD_ERROR, self.text) from None


def broken(field: str, rule: str) -> PydanticCustomError:
    """A rule across fields (a model validator's), naming the field it blames."""
    return PydanticCustomError(FIELD_ERROR, f"{field!r} {rule}")


# A non-empty string of at most 200 characters (\S: not only blanks), stripped.
Title = Annotated[str, Field(min_length=1, max_length=200, pattern=r"\S"), AfterValidator(str.strip),
                  Rule("must be a non-empty string of at most 200 characters")]
Slug = Annotated[str, Field(pattern=SLUG_PATTERN), Rule(SLUG_RULE)]


def _rate(value: object) -> str:
    try:
        return rate_text(parse_rate(value))
    except ValueError as exc:
        raise PydanticCustomError(FIELD_ERROR, str(exc)) from None


# A commission rate from 0 to 1, kept as the decimal string it was given ("0.10").
Rate = Annotated[str, PlainValidator(_rate), WithJsonSchema({
    "type": "string", "pattern": r"^(0(\.[0-9]{1,6})?|1(\.0{1,6})?)$",
    "description": "a rate from 0 to 1 as a decimal string: \"0.10\" (a JSON number is taken too)"})]


class RequestBody(BaseModel):
    """A JSON request body: strict types (no "5" for 5, no true for 1); unknown fields are ignored."""

    model_config = ConfigDict(strict=True, extra="ignore")


class ErrorBody(BaseModel):
    """Every 4xx and 5xx answer's body."""

    error: str = Field(description="a stable code, e.g. invalid_field, show_not_found, unauthorized")
    message: str = Field(description="what went wrong, for people; a field error names the field")


Body = TypeVar("Body", bound=BaseModel)


def parse(model: type[Body], body: dict[str, Any]) -> Body:
    """`body` (already parsed JSON, see util.read_json) as `model`, else a 422 naming the field."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise field_error(model, exc) from None


def field_error(model: type[BaseModel], exc: ValidationError) -> ApiError:
    """The first problem as the API's 422: the field's path and its rule."""
    error = exc.errors(include_url=False)[0]
    path = ".".join(str(part) for part in error["loc"])
    if error["type"] == FIELD_ERROR:
        return ApiError(422, FIELD_ERROR, error["msg"]) if not path else invalid_field(path, error["msg"])
    if error["type"] == "missing":
        return invalid_field(path, _rule(model, path) or "is required")
    return invalid_field(path, error["msg"][:1].lower() + error["msg"][1:])


def _rule(model: type[BaseModel], name: str) -> str | None:
    """The rule of a top-level field of `model` named `name` in JSON (its alias, if it has one)."""
    for field_name, info in model.model_fields.items():
        if (info.alias or field_name) == name:
            return next((m.text for m in info.metadata if isinstance(m, Rule)), None)
    return None
