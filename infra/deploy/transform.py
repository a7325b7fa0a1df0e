"""The SAM transform run locally, and what an emulator's CloudFormation cannot create.

An endpoint that does not run ``AWS::Serverless-2016-10-31`` itself (moto) gets the
template expanded here with ``aws-sam-translator``, the library CloudFormation's own
transform is built on; the resources that emulator is known not to emulate are then
left out (and reported), with the outputs that refer to them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import boto3

from infra.deploy.target import DeployError


@dataclass(frozen=True)
class Gap:
    """A resource an emulator's CloudFormation cannot create, left out of that target."""

    resource_type: str
    reason: str
    applies: Callable[[Mapping[str, Any]], bool] = lambda resource: True


#: What each emulator's CloudFormation does not emulate (moto 5.2). The rest deploys.
EMULATOR_GAPS: dict[str, tuple[Gap, ...]] = {
    "moto": (
        Gap("AWS::Lambda::EventSourceMapping",
            "moto creates event source mappings only from an EventSourceArn: "
            "self-managed Kafka is not emulated",
            lambda resource: "SelfManagedEventSource" in resource.get("Properties", {})),
        Gap("AWS::ApiGateway::Deployment",
            "moto's CloudFormation ignores a RestApi's OpenAPI Body, so the API has no methods to deploy"),
        Gap("AWS::ApiGateway::Stage", "no Deployment to stage (see AWS::ApiGateway::Deployment)"),
    ),
}
#: Resource types whose ``Ref`` an emulator does not resolve to the real value: outputs
#: that are just such a ``Ref`` are left out there instead of printing a wrong value.
EMULATOR_UNRESOLVED_REFS: dict[str, dict[str, str]] = {
    "moto": {"AWS::Lambda::LayerVersion": "moto's Ref of a layer version is not its ARN"},
}


def expand(template: dict[str, Any], parameters: Mapping[str, str], region: str) -> dict[str, Any]:
    """Run the SAM transform locally (``aws-sam-translator``), as CloudFormation would.

    No managed-policy names are used in the template (policy templates and ARNs only),
    so the translator gets an empty policy map and never calls IAM. NoEcho parameters
    are not handed to it: it has no need for secrets.
    """
    from samtranslator.model.exceptions import InvalidDocumentException
    from samtranslator.parser.parser import Parser
    from samtranslator.translator.translator import Translator

    logging.getLogger("samtranslator").setLevel(logging.ERROR)
    secret = {name for name, spec in template.get("Parameters", {}).items() if spec.get("NoEcho")}
    values = {name: value for name, value in parameters.items() if name not in secret}
    translator = Translator(None, Parser(), boto_session=boto3.session.Session(region_name=region))
    try:
        expanded: dict[str, Any] = translator.translate(template, parameter_values=values,
                                                        get_managed_policy_map=dict)
    except InvalidDocumentException as exc:
        causes = "; ".join(str(cause.message) for cause in exc.causes) or str(exc)
        raise DeployError(f"the SAM transform rejected the template: {causes}") from None
    except Exception as exc:  # the translator's own bugs surface as any exception type
        raise DeployError(f"the SAM transform failed: {type(exc).__name__}: {exc}") from None
    return expanded


def _mentions(value: Any, logical_ids: set[str]) -> bool:
    """Whether ``value`` refers (Ref, GetAtt, Sub, DependsOn) to any of ``logical_ids``."""
    if isinstance(value, str):
        return value in logical_ids or any(f"${{{lid}}}" in value or f"${{{lid}." in value
                                           for lid in logical_ids)
    if isinstance(value, list):
        return any(_mentions(item, logical_ids) for item in value)
    if isinstance(value, dict):
        return any(_mentions(item, logical_ids) for item in value.values())
    return False


def leave_out_gaps(template: dict[str, Any], emulator: str | None) -> list[tuple[str, str, str]]:
    """Remove what ``emulator`` cannot create; returns (logical id, type, reason) of each."""
    gaps = EMULATOR_GAPS.get(emulator or "", ())
    resources = template.get("Resources", {})
    skipped = []
    for logical_id, resource in list(resources.items()):
        for gap in gaps:
            if resource.get("Type") == gap.resource_type and gap.applies(resource):
                skipped.append((logical_id, gap.resource_type, gap.reason))
                del resources[logical_id]
                break
    removed = {logical_id for logical_id, _, _ in skipped}
    for resource in resources.values():
        depends = resource.get("DependsOn")
        if isinstance(depends, list):
            resource["DependsOn"] = [name for name in depends if name not in removed]
        elif depends in removed:
            del resource["DependsOn"]
    unresolved = EMULATOR_UNRESOLVED_REFS.get(emulator or "", {})
    outputs = template.get("Outputs", {})
    for name, output in list(outputs.items()):
        value = output.get("Value")
        referenced = resources.get(value.get("Ref", ""), {}) if isinstance(value, dict) else {}
        if _mentions(value, removed):
            reason = "refers to a resource left out"
        elif referenced.get("Type") in unresolved:
            reason = unresolved[referenced["Type"]]
        else:
            continue
        skipped.append((name, "Output", reason))
        del outputs[name]
    return skipped
