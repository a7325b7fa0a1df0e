"""Reading ``template.yaml``: the one description of payfn.

The local platform never keeps its own list of functions, tables or topics: it
reads them here from the SAM template, resolving ``Globals`` and the intrinsic
functions that matter locally (``!Ref`` to parameters, ``!Sub``, ``!GetAtt`` of
tables, ``!If`` on the template's ``Conditions``) against parameter values taken
from the local settings. ``!If`` matters because the deployed targets switch
optional settings (VPC, reserved concurrency, secrets) on and off by parameter: a
property whose condition is false resolves to ``AWS::NoValue`` and is dropped, as
CloudFormation drops it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from samtranslator.yaml_helper import intrinsics_multi_constructor

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_PATH = REPO_ROOT / "template.yaml"
SERVICE_TAG = "payfn:service"


class TemplateError(ValueError):
    """The template is missing something the local platform needs."""


#: ``!Ref AWS::NoValue``: the property (or list item) is removed from the resolved value.
_NO_VALUE = object()


class _TemplateLoader(yaml.SafeLoader):
    """A safe loader that also reads CloudFormation's short-form tags (``!Ref X`` → ``{"Ref": X}``).

    The tags are samtranslator's own constructor (what ``sam`` parses templates with),
    registered on this subclass: ``samtranslator.yaml_helper.yaml_parse`` would register
    it on ``yaml.SafeLoader`` itself, and every other ``safe_load`` in the process would
    then accept ``!`` tags too.
    """


_TemplateLoader.add_multi_constructor("!", intrinsics_multi_constructor)


def parse_template(text: str) -> dict[str, Any]:
    """A SAM/CloudFormation template's YAML (short-form tags included) as plain data."""
    document: dict[str, Any] = yaml.load(text, Loader=_TemplateLoader)  # noqa: S506 - a SafeLoader subclass
    return document


def _deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@dataclass(frozen=True)
class TableSpec:
    """A DynamoDB table declared in the template."""

    logical_id: str
    properties: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.properties["TableName"])


@dataclass(frozen=True)
class EventSpec:
    """One event source of a function (Api, HttpApi, Schedule, SelfManagedKafka, MSK…)."""

    name: str
    type: str
    properties: dict[str, Any]


@dataclass(frozen=True)
class FunctionSpec:
    """One ``AWS::Serverless::Function`` with Globals applied and intrinsics resolved."""

    logical_id: str
    properties: dict[str, Any]
    events: list[EventSpec] = field(default_factory=list)

    @property
    def handler(self) -> str:
        return str(self.properties["Handler"])

    @property
    def runtime(self) -> str:
        return str(self.properties.get("Runtime", "python3.11"))

    @property
    def timeout(self) -> float:
        return float(self.properties.get("Timeout", 3))

    @property
    def memory_size(self) -> int:
        return int(self.properties.get("MemorySize", 128))

    @property
    def environment(self) -> dict[str, str]:
        variables = self.properties.get("Environment", {}).get("Variables", {})
        return {str(k): str(v) for k, v in variables.items()}

    @property
    def layers(self) -> list[str]:
        return [str(layer) for layer in self.properties.get("Layers", [])]

    @property
    def reserved_concurrency(self) -> int | None:
        value = self.properties.get("ReservedConcurrentExecutions")
        return None if value is None else int(value)

    @property
    def service(self) -> str | None:
        return self.properties.get("Tags", {}).get(SERVICE_TAG)


class Template:
    """The parsed template with parameter values resolved for one target."""

    def __init__(self, raw: dict[str, Any], parameters: Mapping[str, str] | None = None) -> None:
        self.raw = raw
        self.parameters = {
            name: str(spec.get("Default", "")) for name, spec in raw.get("Parameters", {}).items()
        }
        self.parameters.update(parameters or {})
        self.resources: dict[str, dict[str, Any]] = raw.get("Resources", {})
        self.conditions: dict[str, Any] = raw.get("Conditions", {})

    def resolve(self, value: Any) -> Any:
        """Resolve the intrinsics payfn's local platform understands; leave others as-is."""
        if isinstance(value, list):
            return [item for item in (self.resolve(v) for v in value) if item is not _NO_VALUE]
        if not isinstance(value, Mapping):
            return value
        if len(value) == 1:
            (key, arg), = value.items()
            if key == "Ref":
                return self._ref(arg)
            if key == "Fn::Sub":
                return self._sub(arg)
            if key == "Fn::GetAtt":
                return self._get_att(arg)
            if key == "Fn::Join":
                sep, items = arg
                return str(sep).join(str(self.resolve(i)) for i in items)
            if key == "Fn::If":
                name, when_true, when_false = arg
                return self.resolve(when_true if self.condition(name) else when_false)
        resolved = {k: self.resolve(v) for k, v in value.items()}
        return {k: v for k, v in resolved.items() if v is not _NO_VALUE}

    def condition(self, name: str) -> bool:
        """The value of one of the template's ``Conditions`` for these parameter values."""
        if name not in self.conditions:
            raise TemplateError(f"condition {name}: not in the template's Conditions")
        return self._evaluate(self.conditions[name])

    def _evaluate(self, expression: Any) -> bool:
        (key, arg), = expression.items()
        if key == "Fn::Equals":
            left, right = arg
            return str(self.resolve(left)) == str(self.resolve(right))
        if key == "Fn::Not":
            return not self._evaluate(arg[0])
        if key == "Fn::And":
            return all(self._evaluate(item) for item in arg)
        if key == "Fn::Or":
            return any(self._evaluate(item) for item in arg)
        if key in ("Condition", "Fn::Condition"):
            return self.condition(arg)
        raise TemplateError(f"condition function {key} is not understood by the local platform")

    def _ref(self, name: str) -> Any:
        if name in self.parameters:
            return self.parameters[name]
        if name == "AWS::NoValue":
            return _NO_VALUE
        pseudo = {"AWS::Region": "us-east-1", "AWS::AccountId": "123456789012",
                  "AWS::StackName": "payfn", "AWS::Partition": "aws", "AWS::URLSuffix": "amazonaws.com"}
        if name in pseudo:
            return pseudo[name]
        resource = self.resources.get(name)
        if resource is None:
            raise TemplateError(f"!Ref {name}: no such parameter or resource")
        if resource["Type"] == "AWS::DynamoDB::Table":
            return self.resolve(resource["Properties"]["TableName"])
        return name

    def _sub(self, arg: Any) -> str:
        text, local = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in local:
                return str(self.resolve(local[name]))
            if "." in name:
                return str(self._get_att(name.split(".", 1)))
            return str(self._ref(name))

        return re.sub(r"\$\{([^}!]+)\}", replace, text)

    def _get_att(self, arg: list[str]) -> str:
        logical_id, attribute = arg
        resource = self.resources.get(logical_id)
        if resource is None:
            raise TemplateError(f"!GetAtt {logical_id}.{attribute}: no such resource")
        if resource["Type"] == "AWS::DynamoDB::Table" and attribute == "Arn":
            name = self.resolve(resource["Properties"]["TableName"])
            return f"arn:aws:dynamodb:us-east-1:123456789012:table/{name}"
        return f"{logical_id}.{attribute}"

    def tables(self) -> list[TableSpec]:
        return [
            TableSpec(logical_id, self.resolve(resource.get("Properties", {})))
            for logical_id, resource in self.resources.items()
            if resource.get("Type") == "AWS::DynamoDB::Table"
        ]

    def functions(self) -> list[FunctionSpec]:
        function_globals = self.raw.get("Globals", {}).get("Function", {})
        specs = []
        for logical_id, resource in self.resources.items():
            if resource.get("Type") != "AWS::Serverless::Function":
                continue
            properties = self.resolve(_deep_merge(function_globals, resource.get("Properties", {})))
            events = [
                EventSpec(name, event["Type"], event.get("Properties", {}))
                for name, event in properties.get("Events", {}).items()
            ]
            specs.append(FunctionSpec(logical_id, properties, events))
        return specs

    def function(self, logical_id: str) -> FunctionSpec:
        for spec in self.functions():
            if spec.logical_id == logical_id:
                return spec
        raise TemplateError(f"no function {logical_id} in the template")


def load_template(path: Path = TEMPLATE_PATH, parameters: Mapping[str, str] | None = None) -> Template:
    """Parse ``template.yaml`` (CloudFormation short-form tags included)."""
    try:
        raw = parse_template(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TemplateError(f"{path} not found") from None
    return Template(raw, parameters)
