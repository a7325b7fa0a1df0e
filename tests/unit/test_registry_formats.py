"""Eureka documents: register-body validation, JSON → XML, XML register bodies."""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree

import pytest
from payfn_shared.platform.registry import InstanceInfo, parse_applications

from infra.registry import eureka
from infra.registry.store import Instance


def test_instance_document_round_trip() -> None:
    info = InstanceInfo("ingest-service", "i-1", "127.0.0.1", 9001, metadata={"metricsPath": "/metrics"})
    instance = eureka.instance_from_document("INGEST-SERVICE", info.to_eureka(), 90, 30)
    assert (instance.app, instance.instance_id, instance.port, instance.status) == (
        "INGEST-SERVICE", "i-1", 9001, "UP")
    assert instance.metadata == {"metricsPath": "/metrics"} and instance.lease_duration == 90
    document = eureka.applications_json({"INGEST-SERVICE": [instance]}, 1)
    (parsed,) = parse_applications(document)["INGEST-SERVICE"]
    assert (parsed.instance_id, parsed.host, parsed.port, parsed.metadata) == (
        "i-1", "127.0.0.1", 9001, {"metricsPath": "/metrics"})


@pytest.mark.parametrize("document", [
    {"port": {"$": 80}}, {"hostName": "h"}, {"hostName": "h", "port": "x"},
    {"hostName": "h", "port": 80, "status": "SLEEPY"}, {"hostName": "h", "port": 70000},
    {"hostName": "h", "port": 80, "metadata": ["a"]},
])
def test_invalid_register_documents(document: dict[str, object]) -> None:
    with pytest.raises(eureka.BadInstanceError):
        eureka.instance_from_document("APP", document, 90, 30)


def test_client_lease_wins_else_configured_default() -> None:
    assert eureka.instance_from_document("A", {"hostName": "h", "port": 1}, 45, 15).lease_duration == 45
    document = {"hostName": "h", "port": 1, "leaseInfo": {"durationInSecs": 7}}
    assert eureka.instance_from_document("A", document, 45, 15).lease_duration == 7


def test_xml_matches_eurekas_conventions() -> None:
    instance = Instance("APP", "i-1", "h", "10.0.0.1", 8080, overridden_status="OUT_OF_SERVICE")
    root = ElementTree.fromstring(eureka.to_xml({"instance": eureka.instance_json(instance)}))  # noqa: S314
    assert root.findtext("overriddenstatus") == "OUT_OF_SERVICE"
    assert root.findtext("status") == "OUT_OF_SERVICE"
    port = root.find("port")
    assert port is not None and (port.text, port.get("enabled")) == ("8080", "true")
    metadata = root.find("metadata")
    assert metadata is not None and metadata.get("class") == "java.util.Collections$EmptyMap"


def test_xml_register_body_and_dtd_refusal() -> None:
    document = eureka.parse_instance_xml(
        b'<instance><hostName>h</hostName><port enabled="true">81</port><metadata/></instance>')
    assert document["port"] == {"@enabled": "true", "$": "81"} and document["metadata"] == {}
    assert eureka.instance_from_document("A", document, 90, 30).port == 81
    with pytest.raises(eureka.BadInstanceError):
        eureka.parse_instance_xml(b'<!DOCTYPE x [<!ENTITY a "b">]><instance/>')
    with pytest.raises(eureka.BadInstanceError):
        eureka.parse_instance_xml(b"<application/>")


def test_apps_hashcode_is_sorted_status_counts() -> None:
    instances = [Instance("A", str(i), "h", "h", 1, reported_status=s) for i, s in
                 enumerate(["UP", "DOWN", "UP", "STARTING"])]
    assert eureka.apps_hashcode(instances) == "DOWN_1_STARTING_1_UP_2_"
