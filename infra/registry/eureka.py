"""Eureka's wire formats: the instance documents clients send and the registry answers.

Eureka's JSON marks XML attributes with ``@`` and element text with ``$`` (a port is
``{"$": 8080, "@enabled": "true"}``), so the registry builds the JSON form once and
derives the XML from it with one generic converter: both formats then always agree.
XML is what Prometheus' ``eureka_sd_configs`` and py-eureka-client parse; Spring's
clients ask for JSON.
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable, Mapping
from typing import Any

from payfn_shared.platform.numbers import parse_decimal

from infra.registry.store import STATUSES, Instance

log = logging.getLogger("payfn.registry")

DEFAULT_DATA_CENTER = {"@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo", "name": "MyOwn"}
_XML_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9._-]*$")
_APP_NAME = re.compile(r"^[A-Za-z0-9._-]{1,256}$")


class BadInstanceError(ValueError):
    """A register body that is not a usable Eureka instance (answered 400)."""


#: Bounds of a registered instance: ids and names, free text, metadata (a DynamoDB item holds 400 KB).
MAX_ID_CHARS = 256
MAX_TEXT_CHARS = 2048
MAX_METADATA_ENTRIES = 64
MAX_METADATA_KEY_CHARS = 128
MAX_METADATA_VALUE_CHARS = 4096
MAX_METADATA_CHARS = 16 * 1024
MAX_LEASE_SECONDS = 86_400
#: Eureka's register documents are 3 levels deep (instance → port → $); anything deeper is refused.
MAX_XML_DEPTH = 8
_TEXT_FIELDS = ("homePageUrl", "statusPageUrl", "healthCheckUrl", "secureHealthCheckUrl", "vipAddress",
                "secureVipAddress", "sid", "appGroupName")
#: Characters XML 1.0 cannot carry even escaped, plus every other control character.
_UNSAFE_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


def _text(value: Any, field: str, limit: int = MAX_TEXT_CHARS) -> str:
    """A string field as stored: no control characters (they would break the XML listing), bounded."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise BadInstanceError(f"{field} must be a string")
    text = str(value)
    if len(text) > limit:
        raise BadInstanceError(f"{field} is longer than {limit} characters")
    if _UNSAFE_TEXT.search(text):
        raise BadInstanceError(f"{field} contains a control character")
    return text


def _integer(value: Any, field: str, low: int, high: int) -> int:
    """A number field (JSON number or, from XML, decimal digits) within [low, high]."""
    if isinstance(value, str):
        value = parse_decimal(value, 19)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadInstanceError(f"{field} must be an integer between {low} and {high}")
    return value


def _port_value(value: Any, field: str, default: int) -> tuple[int, str]:
    """``{"$": 8080, "@enabled": "true"}``, ``8080`` or ``"8080"`` → (8080, "true")."""
    if value in (None, ""):
        return default, "false"
    if isinstance(value, Mapping):
        enabled = _text(value.get("@enabled", "true"), f"{field}.@enabled", 8).lower()
        return _integer(value.get("$", default), field, 1, 65535), enabled
    return _integer(value, field, 1, 65535), "true"


def _metadata(value: Any) -> dict[str, str]:
    if value in (None, ""):
        return {}
    if not isinstance(value, Mapping):
        raise BadInstanceError("metadata must be an object")
    entries = {key: item for key, item in value.items() if not str(key).startswith("@")}
    if len(entries) > MAX_METADATA_ENTRIES:
        raise BadInstanceError(f"metadata has more than {MAX_METADATA_ENTRIES} entries")
    metadata: dict[str, str] = {}
    for key, item in entries.items():
        if not isinstance(key, str) or len(key) > MAX_METADATA_KEY_CHARS or not _XML_NAME.match(key):
            raise BadInstanceError(f"metadata key {str(key)[:40]!r} is not an XML name of at most "
                                   f"{MAX_METADATA_KEY_CHARS} characters")
        metadata[key] = "" if item is None else _text(item, f"metadata.{key}", MAX_METADATA_VALUE_CHARS)
    if sum(len(k) + len(v) for k, v in metadata.items()) > MAX_METADATA_CHARS:
        raise BadInstanceError(f"metadata is larger than {MAX_METADATA_CHARS} characters")
    return metadata


def metadata_update(values: Mapping[str, str]) -> dict[str, str]:
    """``PUT .../metadata?k=v``: the same rules as registered metadata."""
    return _metadata(values)


def _data_center(value: Any) -> dict[str, Any]:
    """``dataCenterInfo``: strings, and for Amazon's a one-level ``metadata`` object of strings."""
    if value in (None, ""):
        return dict(DEFAULT_DATA_CENTER)
    if not isinstance(value, Mapping):
        raise BadInstanceError("dataCenterInfo must be an object")
    info: dict[str, Any] = {}
    for key, item in value.items():
        if key == "metadata" and isinstance(item, Mapping):
            info[key] = {str(k): _text(v, f"dataCenterInfo.metadata.{k}") for k, v in item.items()}
        else:
            info[str(key)] = _text(item, f"dataCenterInfo.{key}")
    return info


def instance_from_document(app: str, document: Mapping[str, Any], default_lease: int,
                           default_renewal: int) -> Instance:
    """Validate a registered ``instance`` document and make it a lease; :class:`BadInstanceError` if not.

    This is the one validator of what the registry stores: a lease that passes it always
    renders in both formats, so one bad registration can never break a listing. The lease
    duration and renewal interval are the client's ``leaseInfo`` when it gives them (as
    Eureka honours them), else the registry's configured defaults.
    """
    if not _APP_NAME.match(app):
        raise BadInstanceError(
            f"application name must be 1-{MAX_ID_CHARS} characters of A-Z, 0-9, '.', '_', '-'")
    host = _text(document.get("hostName") or document.get("ipAddr") or "", "hostName", 253).strip()
    if not host:
        raise BadInstanceError("instance needs hostName or ipAddr")
    port, _ = _port_value(document.get("port"), "port", 0)
    if not port:
        raise BadInstanceError("instance needs a TCP port")
    secure_port = _port_value(document.get("securePort"), "securePort", 443)
    status = _text(document.get("status") or "UP", "status", 32).upper()
    if status not in STATUSES:
        raise BadInstanceError(f"unknown status {status}")
    overridden = _text(document.get("overriddenStatus") or document.get("overriddenstatus") or "UNKNOWN",
                       "overriddenStatus", 32).upper()
    lease = document.get("leaseInfo") or {}
    if not isinstance(lease, Mapping):
        raise BadInstanceError("leaseInfo must be an object")
    duration = lease.get("durationInSecs")
    renewal = lease.get("renewalIntervalInSecs")
    instance_id = _text(document.get("instanceId") or f"{host}:{app.lower()}:{port}", "instanceId",
                        MAX_ID_CHARS)
    stored: dict[str, Any] = {
        "securePort": {"$": secure_port[0], "@enabled": secure_port[1]},
        "countryId": _integer(document.get("countryId", 1), "countryId", 0, 2**31 - 1),
        "dataCenterInfo": _data_center(document.get("dataCenterInfo")),
        "isCoordinatingDiscoveryServer": _text(document.get("isCoordinatingDiscoveryServer", "false"),
                                               "isCoordinatingDiscoveryServer", 8).lower(),
    }
    stored.update({key: _text(document[key], key) for key in _TEXT_FIELDS if document.get(key) is not None})
    return Instance(
        app=app.upper(),
        instance_id=instance_id,
        host_name=host,
        ip_addr=_text(document.get("ipAddr") or host, "ipAddr", 253),
        port=port,
        reported_status=status,
        overridden_status=overridden if overridden in STATUSES else "UNKNOWN",
        metadata=_metadata(document.get("metadata")),
        renewal_interval=_integer(renewal, "leaseInfo.renewalIntervalInSecs", 1, MAX_LEASE_SECONDS)
        if renewal not in (None, "", 0, "0") else default_renewal,
        lease_duration=_integer(duration, "leaseInfo.durationInSecs", 1, MAX_LEASE_SECONDS)
        if duration not in (None, "", 0, "0") else default_lease,
        last_dirty_ts=_integer(document.get("lastDirtyTimestamp") or 0, "lastDirtyTimestamp", 0, 2**63 - 1),
        document=stored,
    )


def instance_json(instance: Instance, action: str = "ADDED") -> dict[str, Any]:
    """One instance as Eureka's JSON writes it (``actionType`` used by deltas).

    The result goes through the registration validator again, so a lease stored before
    it existed (or by another writer) that could not render raises :class:`BadInstanceError`.
    """
    doc = instance.document
    base = f"http://{instance.host_name}:{instance.port}"
    rendered = {
        "instanceId": instance.instance_id,
        "hostName": instance.host_name,
        "app": instance.app,
        "ipAddr": instance.ip_addr,
        "status": instance.status,
        "overriddenStatus": instance.overridden_status,
        "port": {"$": instance.port, "@enabled": "true"},
        "securePort": doc.get("securePort") or {"$": 443, "@enabled": "false"},
        "countryId": doc.get("countryId", 1),
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
    instance_from_document(instance.app, rendered, instance.lease_duration, instance.renewal_interval)
    return rendered


def apps_hashcode(instances: Iterable[Instance]) -> str:
    """Eureka's ``apps__hashcode``: ``STATUS_count_`` sorted by status (clients compare it)."""
    counts: dict[str, int] = {}
    for instance in instances:
        counts[instance.status] = counts.get(instance.status, 0) + 1
    return "".join(f"{status}_{count}_" for status, count in sorted(counts.items()))


def application_json(name: str, instances: Iterable[Instance], action: str = "ADDED") -> dict[str, Any]:
    """One application; a stored lease that cannot render is logged and left out, never fatal."""
    rendered = []
    for instance in instances:
        try:
            rendered.append(instance_json(instance, action))
        except BadInstanceError as exc:
            log.warning("lease %s/%s left out of the listing: %s", instance.app, instance.instance_id, exc)
    return {"name": name, "instance": rendered}


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


def _xml_depth(root: ElementTree.Element) -> int:
    deepest, pending = 0, [(root, 1)]
    while pending:
        element, level = pending.pop()
        deepest = max(deepest, level)
        pending.extend((child, level + 1) for child in element)
    return deepest


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
    if _xml_depth(root) > MAX_XML_DEPTH:
        raise BadInstanceError(f"XML body is nested deeper than {MAX_XML_DEPTH} levels")
    document = _from_element(root)
    if not isinstance(document, dict):
        raise BadInstanceError("empty <instance>")
    metadata = document.get("metadata")
    if isinstance(metadata, str):
        document["metadata"] = {}
    return document
