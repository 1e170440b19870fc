"""Tool schemas the grammar tests run through every engine path (--local and Triton)."""

from __future__ import annotations

from typing import Any

SCHEMAS: dict[str, dict[str, Any]] = {
    "get_weather": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 8}, "days": {"type": "integer"}},
        "required": ["city", "days"],
    },
    "set_light": {
        "type": "object",
        "properties": {"on": {"type": "boolean"}, "level": {"enum": [1, 2, 3]}},
        "required": ["on", "level"],
        "additionalProperties": False,
    },
    "tag": {
        "type": "object",
        "properties": {
            "labels": {
                "type": "array",
                "items": {"type": "string", "pattern": "^[a-z]{1,4}$"},
                "maxItems": 2,
            }
        },
        "required": ["labels"],
    },
}
TOOLS = [{"type": "function", "function": {"name": n, "parameters": s}} for n, s in SCHEMAS.items()]
USER = [{"role": "user", "content": "Do something."}]
