"""JSON Schema documents of the tracking calls, generated from the models.

``python -m events.json_schemas schemas/`` rewrites ``schemas/v1/*.json``; a test
fails when the files and the models drift apart.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from events.ecommerce import PROPERTIES_BY_TYPE
from events.segment import CALL_MODELS, BatchRequest

SCHEMA_VERSION = "v1"
# One document per call type (``track``…, ``batch``) and one per canonical event
# type's properties (``cart.properties``…).
CALLS: dict[str, type[BaseModel]] = {
    **CALL_MODELS,
    "batch": BatchRequest,
    **{f"{kind.value}.properties": model for kind, model in PROPERTIES_BY_TYPE.items()},
}


def call_schemas() -> dict[str, dict[str, Any]]:
    """Each JSON Schema document, keyed by its name (the file's stem)."""
    documents = {}
    for name, model in CALLS.items():
        schema = model.model_json_schema()
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"urn:customer-journeys:schemas:{SCHEMA_VERSION}:{name}"
        documents[name] = schema
    return documents


def render(schema: dict[str, Any]) -> str:
    """The file text of a schema: stable key order, trailing newline."""
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write(root: Path) -> list[Path]:
    """Write every schema under ``root/<version>/``; returns the files written."""
    folder = root / SCHEMA_VERSION
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in call_schemas().items():
        path = folder / f"{name}.json"
        path.write_text(render(schema))
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write(Path(sys.argv[1] if len(sys.argv) > 1 else "schemas")):
        print(path)
