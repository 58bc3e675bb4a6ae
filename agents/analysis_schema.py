"""The structured fields an agent's post-call analysis fills in: a JSON Schema object.

The model fills them through the Responses API's Structured Outputs in strict mode, which
takes a subset of JSON Schema: every object lists all its properties as required and allows
no others. An operator writes the properties; the rest is filled in here, then the whole is
checked as a JSON Schema (draft 2020-12) before it is saved.
"""

from typing import Any

from django.core.exceptions import ValidationError
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

# Strict mode allows at most this many properties in all (the provider's documented limit).
MAX_PROPERTIES = 100


def _strict(schema: dict[str, Any], where: str) -> dict[str, Any]:
    """`schema` with every object's properties all required and no others allowed."""
    schema = dict(schema)
    if schema.get("type") == "object":
        properties = schema.get("properties")
        if not isinstance(properties, dict) or not properties:
            raise ValidationError(f'{where}: an object needs a non-empty "properties" object.')
        schema["properties"] = {
            name: _strict(sub, f"{where}.{name}") if isinstance(sub, dict) else sub
            for name, sub in properties.items()
        }
        schema["required"] = list(properties)
        schema["additionalProperties"] = False
    if schema.get("type") == "array" and isinstance(schema.get("items"), dict):
        schema["items"] = _strict(schema["items"], f"{where}[]")
    return schema


def analysis_schema_normalize(schema: Any) -> dict[str, Any]:
    """The schema to store, or a ValidationError saying what is wrong. {} means no fields."""
    if schema in (None, {}, ""):
        return {}
    if not isinstance(schema, dict):
        raise ValidationError("The analysis fields must be a JSON object (a JSON Schema).")
    if schema.get("type") != "object":
        raise ValidationError('The analysis fields must be a schema of "type": "object".')
    normalized = _strict(schema, "fields")
    try:
        Draft202012Validator.check_schema(normalized)
    except SchemaError as error:
        path = ".".join(str(part) for part in error.path) or "the schema"
        raise ValidationError(f"Not a valid JSON Schema at {path}: {error.message}") from error
    if len(normalized["properties"]) > MAX_PROPERTIES:
        raise ValidationError(f"At most {MAX_PROPERTIES} fields.")
    return normalized
