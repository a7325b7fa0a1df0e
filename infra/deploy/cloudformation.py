"""Create or update the stack, wait with boto3's CloudFormation waiters, read its outputs.

A failure is reported with the failed resources' status reasons from the stack's
events (AWS), or with the call's own error (an emulator that creates resources inside
CreateStack). A first creation that rolled back is deleted before the stack is created
again, as CloudFormation cannot update it.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, WaiterError
from botocore.parsers import ResponseParserError

from infra.deploy.target import Clients, DeployError, DeployTarget, describe_aws_error

#: CloudFormation's limit on an inline TemplateBody; larger templates go through S3.
TEMPLATE_BODY_LIMIT = 51_200
SUCCESS = ("CREATE_COMPLETE", "UPDATE_COMPLETE")
#: States a stack cannot be updated from: a failed first creation must be deleted first.
DEAD = ("ROLLBACK_COMPLETE", "ROLLBACK_FAILED", "CREATE_FAILED", "DELETE_FAILED")
NO_CHANGE = "No updates are to be performed"
#: How often the waiters poll, and how long they wait for a stack to be deployed or deleted.
WAIT_DELAY_SECONDS = 2
STACK_TIMEOUT_SECONDS = 3600.0
DELETE_TIMEOUT_SECONDS = 900.0


def stack_status(cloudformation: Any, stack_name: str) -> dict[str, Any] | None:
    """The stack's description, or None when there is none."""
    try:
        stacks = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    except ClientError as exc:
        if "does not exist" in exc.response.get("Error", {}).get("Message", ""):
            return None
        raise
    return stacks[0] if stacks else None


def failure_reasons(events: Iterable[Mapping[str, Any]]) -> list[str]:
    """``LogicalId (Type): reason`` of each failed resource event, oldest first, without repeats."""
    reasons: list[str] = []
    for event in sorted(events, key=lambda e: str(e.get("Timestamp", ""))):
        if not str(event.get("ResourceStatus", "")).endswith("_FAILED"):
            continue
        line = (f"{event.get('LogicalResourceId')} ({event.get('ResourceType')}): "
                f"{event.get('ResourceStatusReason') or event.get('ResourceStatus')}")
        if line not in reasons:
            reasons.append(line)
    return reasons


def waiter_config(timeout: float) -> dict[str, int]:
    """boto3's ``WaiterConfig`` polling every :data:`WAIT_DELAY_SECONDS` for up to ``timeout``."""
    return {"Delay": WAIT_DELAY_SECONDS, "MaxAttempts": max(1, math.ceil(timeout / WAIT_DELAY_SECONDS))}


def wait_for_stack(cloudformation: Any, stack_name: str, waiter_name: str,
                   timeout: float = STACK_TIMEOUT_SECONDS) -> dict[str, Any]:
    """Wait with boto3's ``waiter_name`` waiter; returns the stack's description as it ended.

    A waiter's failure state (a rollback, say) is not an error here: the caller reads
    the final status and reports the failed resources. Running out of attempts is.
    """
    try:
        cloudformation.get_waiter(waiter_name).wait(StackName=stack_name, WaiterConfig=waiter_config(timeout))
    except WaiterError as exc:
        reason = str(exc.kwargs.get("reason", exc))
    else:
        reason = ""
    stack = stack_status(cloudformation, stack_name)
    if stack is None:
        raise DeployError(f"stack {stack_name} disappeared while deploying")
    if str(stack["StackStatus"]).endswith("_IN_PROGRESS") and reason:
        detail = f"after {timeout:.0f} s" if reason.startswith("Max attempts exceeded") else f"({reason})"
        raise DeployError(f"stack {stack_name} still {stack['StackStatus']} {detail}")
    return stack


def delete_dead_stack(cloudformation: Any, stack_name: str) -> None:
    """Delete a stack whose first creation failed (CloudFormation cannot update it) and wait."""
    cloudformation.delete_stack(StackName=stack_name)
    try:
        cloudformation.get_waiter("stack_delete_complete").wait(
            StackName=stack_name, WaiterConfig=waiter_config(DELETE_TIMEOUT_SECONDS))
    except WaiterError as exc:
        raise DeployError(f"stack {stack_name} could not be deleted after its failed creation: "
                          f"{exc.kwargs.get('reason', exc)}") from None


def _template_argument(clients: Clients, target: DeployTarget, bucket: str, body: str) -> dict[str, str]:
    """Inline when small enough, else uploaded next to the artifacts.

    The URL is the virtual-hosted S3 form, which CloudFormation reads with the
    caller's permissions and which emulators map to their own S3.
    """
    if len(body.encode("utf-8")) <= TEMPLATE_BODY_LIMIT:
        return {"TemplateBody": body}
    key = f"{target.stack_name}/{hashlib.sha256(body.encode()).hexdigest()}.template"
    clients("s3").put_object(Bucket=bucket, Key=key, Body=body.encode("utf-8"))
    return {"TemplateURL": f"https://{bucket}.s3.{target.region}.amazonaws.com/{key}"}


def create_or_update(clients: Clients, target: DeployTarget, template: dict[str, Any], bucket: str) -> str:
    """Create the stack, or update it (an unchanged template is a no-op); returns the final status."""
    cloudformation = clients("cloudformation")
    declared = template.get("Parameters", {})
    unknown = sorted(target.explicit - set(declared))
    if unknown:
        raise DeployError(f"the template has no parameter(s) {', '.join(unknown)}")
    request: dict[str, Any] = {
        "StackName": target.stack_name,
        "Capabilities": list(target.capabilities),
        "Parameters": [{"ParameterKey": key, "ParameterValue": value}
                       for key, value in sorted(target.parameters.items()) if key in declared],
        "Tags": [{"Key": "payfn:env", "Value": target.env}],
        **_template_argument(clients, target, bucket, json.dumps(template)),
    }
    existing = stack_status(cloudformation, target.stack_name)
    if existing is not None and existing["StackStatus"] in DEAD:
        delete_dead_stack(cloudformation, target.stack_name)
        existing = None
    try:
        if existing is None:
            cloudformation.create_stack(**request)
        else:
            cloudformation.update_stack(**request)
    except (ClientError, BotoCoreError, ResponseParserError) as exc:
        if isinstance(exc, ClientError) and NO_CHANGE in exc.response.get("Error", {}).get("Message", ""):
            return "NO_CHANGE"
        # AWS reports a failed resource through the stack's events (below); an emulator
        # that creates resources synchronously reports it here, as the call's error.
        raise DeployError(f"CloudFormation at {target.where} could not deploy stack {target.stack_name}: "
                          f"{describe_aws_error(exc, target.where)}") from None
    waiter = "stack_create_complete" if existing is None else "stack_update_complete"
    stack = wait_for_stack(cloudformation, target.stack_name, waiter)
    status = str(stack["StackStatus"])
    if status not in SUCCESS:
        events = cloudformation.describe_stack_events(StackName=target.stack_name)["StackEvents"]
        reasons = failure_reasons(events) or [str(stack.get("StackStatusReason") or "no reason given")]
        raise DeployError(f"stack {target.stack_name} ended {status}:\n  " + "\n  ".join(reasons))
    return status


def stack_outputs(clients: Clients, stack_name: str) -> dict[str, str]:
    """The stack's outputs as ``{key: value}``."""
    stack = stack_status(clients("cloudformation"), stack_name) or {}
    return {str(o["OutputKey"]): str(o.get("OutputValue", "")) for o in stack.get("Outputs") or []}
