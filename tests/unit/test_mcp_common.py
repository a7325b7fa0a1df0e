"""The answer shape every payfn MCP tool shares: summary for people, structure for programs."""

from __future__ import annotations

import json

from payfn_mcp.common import answer
from payfn_shared.platform.errors import FieldError, ServiceUnavailable, ValidationFailed


def test_a_report_is_summary_then_json_and_structured() -> None:
    result = answer(lambda: {"summary": "3 payment(s)", "count": 3, "at": {"nested": [1, 2]}})
    assert not result.is_error
    assert len(result.content) == 2 and result.content[0].text == "3 payment(s)"
    assert json.loads(result.content[1].text) == result.structured_content
    assert result.structured_content == {"summary": "3 payment(s)", "count": 3, "at": {"nested": [1, 2]}}


def test_a_refusal_is_a_tool_error_with_the_api_error_body() -> None:
    def refuse() -> dict[str, object]:
        raise ValidationFailed("Invalid filter", errors=[FieldError("filter", "unknown word 'x'")])

    result = answer(refuse)
    assert result.is_error
    assert result.content[0].text == "VALIDATION_FAILED: Invalid filter (filter: unknown word 'x')"
    assert result.structured_content == {
        "code": "VALIDATION_FAILED", "message": "Invalid filter",
        "errors": [{"field": "filter", "message": "unknown word 'x'"}],
    }


def test_a_missing_dependency_is_a_tool_error_too() -> None:
    def down() -> dict[str, object]:
        raise ServiceUnavailable("Database is unavailable")

    result = answer(down)
    assert result.is_error and result.structured_content["code"] == "SERVICE_UNAVAILABLE"
