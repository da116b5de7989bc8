"""Tool use in the data, in the layout chat templates read: function_call turns as tool_calls, `tools` as schemas."""

from __future__ import annotations

import json
from typing import Any

FUNCTION_CALL_ROLES = ("function_call",)  # LLaMA-Factory's `function_tag` (glaive_toolcall and its descendants)


def parse_function_call(value: Any) -> list[dict] | None:
    """A ShareGPT function_call value ('{"name": ..., "arguments": ...}', or a JSON list of them for parallel calls)
    as tool_calls; None when it is not one."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    calls = value if isinstance(value, list) else [value]
    if not calls or not all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in calls):
        return None
    return [tool_call(c) for c in calls]


def tool_call(call: dict) -> dict:
    """One call as {"type": "function", "function": {"name": ..., "arguments": {...}}} (transformers' tool-use docs),
    its arguments a mapping (Llama-3.1 and others `tojson` them: a JSON string would be written as a quoted string).
    Datasets in Llama's own output format name them `parameters`."""
    function = call["function"] if isinstance(call.get("function"), dict) else call
    arguments = function["arguments"] if "arguments" in function else function.get("parameters", {})
    out: dict[str, Any] = {
        "type": "function",
        "function": {"name": function.get("name"), "arguments": _arguments(arguments)},
    }
    if call.get("id") is not None:  # Mistral's template pairs calls and results by id
        out["id"] = call["id"]
    return out


def with_tool_calls(message: dict) -> dict:
    """An assistant message whose tool_calls are in tool_call's layout (OpenAI-style JSON-string arguments parsed)."""
    calls = message.get("tool_calls")
    if not isinstance(calls, list) or not all(isinstance(c, dict) for c in calls):
        return message  # check_rows names what is wrong with it
    return {**message, "tool_calls": [tool_call(c) for c in calls]}


def parse_tools(tools: Any) -> Any:
    """The `tools` column as a list of {"type": "function", "function": {name, description, parameters}}: a JSON string
    parsed (glaive keeps them so), bare {name, parameters} schemas wrapped; None for no tools."""
    if isinstance(tools, str):
        if not tools.strip():
            return None
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError:
            return tools  # check_rows reports it
    if not isinstance(tools, list):
        return tools or None
    wrapped = [{"type": "function", "function": t} if isinstance(t, dict) and "name" in t else t for t in tools]
    return wrapped or None


def tools_issue(tools: Any) -> str:
    """What is wrong with a row's `tools` value; empty when nothing is."""
    if isinstance(tools, str) and tools.strip():
        try:
            json.loads(tools)
        except json.JSONDecodeError as e:
            return f"tools is not valid JSON: {e}"
    tools = parse_tools(tools)
    if tools is not None and (not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools)):
        return "tools must be a list of JSON-schema tool objects"
    return ""


def function_call_issues(conversations: Any) -> list[str]:
    """ShareGPT function_call turns whose value is not a JSON tool call."""
    if not isinstance(conversations, list):
        return []
    return [
        f"conversations[{i}] is a {turn['from']!r} turn whose value is not a JSON tool call "
        f'{{"name": ..., "arguments": {{...}}}} (or a list of them): {str(turn.get("value"))[:80]}'
        for i, turn in enumerate(conversations)
        if isinstance(turn, dict)
        and isinstance(turn.get("from"), str)
        and turn["from"].lower() in FUNCTION_CALL_ROLES
        and parse_function_call(turn.get("value")) is None
    ]


def _arguments(arguments: Any) -> Any:
    if isinstance(arguments, str):
        try:
            parsed = json.loads(arguments)
        except json.JSONDecodeError:
            return arguments
        return parsed if isinstance(parsed, dict) else arguments
    return arguments
