"""Pydantic models of the JSON bodies the HTTP API takes and gives, by API area; the OpenAPI
document (relay/http/openapi.py) is generated from them."""
