"""Eureka's wire formats: the instance documents clients send and the registry answers.

Eureka's JSON marks XML attributes with ``@`` and element text with ``$`` (a port is
``{"$": 8080, "@enabled": "true"}``), so the registry builds the JSON form once and
derives the XML from it with one generic converter: both formats then always agree.
XML is what Prometheus' ``eureka_sd_configs`` and py-eureka-client parse; Spring's
clients ask for JSON.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable, Mapping
from typing import Any

from infra.registry.store import STATUSES, Instance

DEFAULT_DATA_CENTER = {"@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo", "name": "MyOwn"}
_XML_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9._-]*$")


class BadInstanceError(ValueError):
    """A register body that is not a usable Eureka instance (answered 400)."""


def _port_value(value: Any, default: int) -> tuple[int, str]:
    """``{"$": 8080, "@enabled": "true"}``, ``8080`` or ``"8080"`` → (8080, "true")."""
    if isinstance(value, Mapping):
        return int(value.get("$", default)), str(value.get("@enabled", "true")).lower()
    if value in (None, ""):
        return default, "false"
    return int(value), "true"


def instance_from_document(app: str, document: Mapping[str, Any], default_lease: int,
                           default_renewal: int) -> Instance:
    """Validate a registered ``instance`` document and make it a lease.

    The lease duration and renewal interval are the client's ``leaseInfo`` when it
    gives them (as Eureka honours them), else the registry's configured defaults.
    """
    host = str(document.get("hostName") or document.get("ipAddr") or "").strip()
    if not host:
        raise BadInstanceError("instance needs hostName or ipAddr")
    try:
        port, _ = _port_value(document.get("port"), 0)
    except (TypeError, ValueError):
        raise BadInstanceError("instance port is not a number") from None
    if not 0 < port < 65536:
        raise BadInstanceError("instance needs a TCP port")
    status = str(document.get("status") or "UP").upper()
    if status not in STATUSES:
        raise BadInstanceError(f"unknown status {status}")
    overridden = str(
        document.get("overriddenStatus") or document.get("overriddenstatus") or "UNKNOWN"
    ).upper()
    if overridden not in STATUSES:
        overridden = "UNKNOWN"
    lease = document.get("leaseInfo") or {}
    try:
        duration = int(lease.get("durationInSecs") or 0) or default_lease
        renewal = int(lease.get("renewalIntervalInSecs") or 0) or default_renewal
        dirty = int(document.get("lastDirtyTimestamp") or 0)
    except (TypeError, ValueError):
        raise BadInstanceError("leaseInfo values are not numbers") from None
    metadata = document.get("metadata") or {}
    if not isinstance(metadata, Mapping):
        raise BadInstanceError("metadata must be an object")
    instance_id = str(document.get("instanceId") or f"{host}:{app.lower()}:{port}")
    return Instance(
        app=app.upper(),
        instance_id=instance_id,
        host_name=host,
        ip_addr=str(document.get("ipAddr") or host),
        port=port,
        reported_status=status,
        overridden_status=overridden,
        metadata={str(k): "" if v is None else str(v) for k, v in metadata.items() if not k.startswith("@")},
        renewal_interval=renewal,
        lease_duration=duration,
        last_dirty_ts=dirty,
        document={key: document[key] for key in (
            "securePort", "countryId", "dataCenterInfo", "homePageUrl", "statusPageUrl",
            "healthCheckUrl", "secureHealthCheckUrl", "vipAddress", "secureVipAddress", "sid",
            "appGroupName", "isCoordinatingDiscoveryServer",
        ) if key in document},
    )


def instance_json(instance: Instance, action: str = "ADDED") -> dict[str, Any]:
    """One instance as Eureka's JSON writes it (``actionType`` used by deltas)."""
    doc = instance.document
    base = f"http://{instance.host_name}:{instance.port}"
    try:
        secure_port, secure_enabled = _port_value(doc.get("securePort"), 443)
    except (TypeError, ValueError):
        secure_port, secure_enabled = 443, "false"
    return {
        "instanceId": instance.instance_id,
        "hostName": instance.host_name,
        "app": instance.app,
        "ipAddr": instance.ip_addr,
        "status": instance.status,
        "overriddenStatus": instance.overridden_status,
        "port": {"$": instance.port, "@enabled": "true"},
        "securePort": {"$": secure_port, "@enabled": secure_enabled},
        "countryId": int(doc.get("countryId") or 1),
        "dataCenterInfo": doc.get("dataCenterInfo") or dict(DEFAULT_DATA_CENTER),
        "leaseInfo": {
            "renewalIntervalInSecs": instance.renewal_interval,
            "durationInSecs": instance.lease_duration,
            "registrationTimestamp": instance.registration_ts,
            "lastRenewalTimestamp": instance.last_renewal_ts,
            "evictionTimestamp": 0,
            "serviceUpTimestamp": instance.service_up_ts,
        },
        "metadata": dict(instance.metadata) or {"@class": "java.util.Collections$EmptyMap"},
        "homePageUrl": doc.get("homePageUrl") or f"{base}/",
        "statusPageUrl": doc.get("statusPageUrl") or f"{base}/health",
        "healthCheckUrl": doc.get("healthCheckUrl") or f"{base}/health",
        "vipAddress": doc.get("vipAddress") or instance.app.lower(),
        "secureVipAddress": doc.get("secureVipAddress") or instance.app.lower(),
        "isCoordinatingDiscoveryServer": str(doc.get("isCoordinatingDiscoveryServer", "false")).lower(),
        "lastUpdatedTimestamp": str(instance.last_updated_ts),
        "lastDirtyTimestamp": str(instance.last_dirty_ts),
        "actionType": action,
    }


def apps_hashcode(instances: Iterable[Instance]) -> str:
    """Eureka's ``apps__hashcode``: ``STATUS_count_`` sorted by status (clients compare it)."""
    counts: dict[str, int] = {}
    for instance in instances:
        counts[instance.status] = counts.get(instance.status, 0) + 1
    return "".join(f"{status}_{count}_" for status, count in sorted(counts.items()))


def application_json(name: str, instances: Iterable[Instance], action: str = "ADDED") -> dict[str, Any]:
    return {"name": name, "instance": [instance_json(i, action) for i in instances]}


def applications_json(apps: Mapping[str, list[Instance]], version: int, action: str = "ADDED",
                      hash_over: Iterable[Instance] | None = None) -> dict[str, Any]:
    """``{"applications": …}``; ``hash_over`` is the full registry for deltas (clients check it)."""
    everything = [i for instances in apps.values() for i in instances] if hash_over is None else hash_over
    return {
        "applications": {
            "versions__delta": str(version),
            "apps__hashcode": apps_hashcode(everything),
            "application": [application_json(name, instances, action) for name, instances in apps.items()],
        }
    }


def _to_element(tag: str, value: Any) -> list[ElementTree.Element]:
    """One JSON value → XML element(s): lists repeat the tag, ``@x`` are attributes, ``$`` text."""
    if isinstance(value, list):
        return [element for item in value for element in _to_element(tag, item)]
    element = ElementTree.Element(tag)
    if isinstance(value, Mapping):
        for key, item in value.items():
            if key.startswith("@"):
                element.set(key[1:], str(item))
            elif key == "$":
                element.text = str(item)
            elif _XML_NAME.match(key):
                element.extend(_to_element(key, item))
    elif isinstance(value, bool):
        element.text = "true" if value else "false"
    elif value is not None:
        element.text = str(value)
    return [element]


def to_xml(document: Mapping[str, Any]) -> bytes:
    """A one-rooted Eureka JSON document as Eureka's XML (with the XML declaration)."""
    (root_tag, value), = document.items()
    (root,) = _to_element(root_tag, value)
    _rename_overridden(root)
    return ElementTree.tostring(root, encoding="UTF-8", xml_declaration=True)


def _rename_overridden(root: ElementTree.Element) -> None:
    """Eureka's XML spells it ``overriddenstatus`` (JSON: ``overriddenStatus``)."""
    for element in root.iter("overriddenStatus"):
        element.tag = "overriddenstatus"


def _from_element(element: ElementTree.Element) -> Any:
    children = list(element)
    if not children and not element.attrib:
        return element.text or ""
    value: dict[str, Any] = {f"@{k}": v for k, v in element.attrib.items()}
    if not children:
        value["$"] = element.text or ""
        return value
    for child in children:
        item = _from_element(child)
        if child.tag in value:
            existing = value[child.tag]
            value[child.tag] = [*existing, item] if isinstance(existing, list) else [existing, item]
        else:
            value[child.tag] = item
    return value


def parse_instance_xml(body: bytes) -> dict[str, Any]:
    """An XML register body (``<instance>…</instance>``) as the JSON-shaped document."""
    if b"<!DOCTYPE" in body.upper() or b"<!ENTITY" in body.upper():
        raise BadInstanceError("DTDs and entities are not accepted")
    try:
        # Safe without defusedxml: DTDs are refused above and ElementTree never fetches external entities.
        root = ElementTree.fromstring(body)  # noqa: S314
    except ElementTree.ParseError as exc:
        raise BadInstanceError(f"malformed XML: {exc}") from None
    if root.tag != "instance":
        raise BadInstanceError("XML body must be an <instance> element")
    document = _from_element(root)
    if not isinstance(document, dict):
        raise BadInstanceError("empty <instance>")
    metadata = document.get("metadata")
    if isinstance(metadata, str):
        document["metadata"] = {}
    return document
