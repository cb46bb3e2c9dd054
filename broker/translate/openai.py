"""OpenAI's tool definitions: Chat Completions and Responses.

Chat Completions (`openai.types.chat.ChatCompletionFunctionToolParam`) nests the function:
`{"type": "function", "function": {"name", "description", "parameters", "strict"}}`; the Responses API
(`openai.types.responses.FunctionToolParam`) flattens it: `{"type": "function", "name", "description",
"parameters", "strict"}`. The parameters are the strict form when the tool's schema has one
(broker/translate/openai_strict.py) and strict is wanted, else the schema as the server wrote it (less
`$schema`) with `"strict": false`: the API takes full JSON Schema there, and the broker checks the arguments
against the tool's own schema when the call comes.
"""

from __future__ import annotations

from typing import Any

from broker.translate.openai_strict import strict_schema
from broker.translate.schemas import Definition, Unexpressible, description_of, input_schema_of


def function(tool: dict[str, Any], name: str, strict: bool) -> tuple[dict[str, Any], tuple[str, ...]]:
    """(name, description, parameters, strict) of the tool as OpenAI reads them, with what changed."""
    schema = input_schema_of(tool)
    notes: tuple[str, ...] = ()
    fields: dict[str, Any] = {"name": name}
    if description := description_of(tool):
        fields["description"] = description
    if strict:
        try:
            parameters, dropped = strict_schema(schema)
        except Unexpressible as err:
            fields.update(parameters=schema, strict=False)
            return fields, (f"strict false: {err}",)
        fields.update(parameters=parameters, strict=True)
        if dropped:
            notes = (f"strict mode drops {', '.join(dropped)} (the broker still checks them)",)
        return fields, notes
    fields.update(parameters=schema, strict=False)
    return fields, notes


def chat_definition(tool: dict[str, Any], name: str, strict: bool) -> Definition:
    fields, notes = function(tool, name, strict)
    return Definition({"type": "function", "function": fields}, notes)


def responses_definition(tool: dict[str, Any], name: str, strict: bool) -> Definition:
    fields, notes = function(tool, name, strict)
    return Definition({"type": "function", **fields}, notes)
