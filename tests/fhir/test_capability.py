"""Route shapes → CapabilityStatement interactions."""

from __future__ import annotations

from pathlib import Path

import pytest

from radtriage.fhir.capability import Operation, Route, SearchParam, Security, capability_statement
from tests.support.fhir_validation import assert_valid_fhir

STATUS = SearchParam("status", "token", "http://hl7.org/fhir/SearchParameter/Task-status", "task status")


def test_routes_become_interactions(fhir_schema_path: Path) -> None:
    routes = [
        Route("/", frozenset({"POST"}), "Transactions."),
        Route("/metadata", frozenset({"GET", "HEAD", "OPTIONS"})),
        Route("/Task", frozenset({"GET", "HEAD", "OPTIONS"}), "Search."),
        Route("/Task/<task_id>", frozenset({"GET", "HEAD"})),
        Route("/ImagingStudy", frozenset({"POST"})),
    ]
    statement = capability_statement(routes, search_params={"Task": [STATUS]}, base_url="http://h/fhir")
    [rest] = statement["rest"]
    assert rest["interaction"] == [{"code": "transaction", "documentation": "Transactions."}]
    by_type = {r["type"]: r for r in rest["resource"]}
    assert set(by_type) == {"ImagingStudy", "Task"}
    assert [i["code"] for i in by_type["ImagingStudy"]["interaction"]] == ["create"]
    assert sorted(i["code"] for i in by_type["Task"]["interaction"]) == ["read", "search-type"]
    assert by_type["Task"]["searchParam"][0]["name"] == "status"
    assert "searchParam" not in by_type["ImagingStudy"]
    assert statement["fhirVersion"] == "4.0.1"
    assert statement["implementation"]["url"] == "http://h/fhir"
    assert_valid_fhir(statement, fhir_schema_path)


@pytest.mark.parametrize(
    "route",
    [Route("/Task/<task_id>/_history", frozenset({"GET"})), Route("/Task/<task_id>", frozenset({"DELETE"}))],
)
def test_a_route_the_statement_cannot_describe_is_an_error(route: Route) -> None:
    with pytest.raises(ValueError, match="cannot describe"):
        capability_statement([route], search_params={}, base_url="http://h/fhir")


EXPORT = Operation("audit-export", "https://radtriage.example/fhir/OperationDefinition/audit-export")


def test_operations_and_discovery_routes(fhir_schema_path: Path) -> None:
    routes = [
        Route("/$audit-export", frozenset({"GET", "HEAD"}), "Export."),
        Route("/.well-known/smart-configuration", frozenset({"GET"})),
    ]
    statement = capability_statement(
        routes, search_params={}, base_url="http://h/fhir", operations={"audit-export": EXPORT}
    )
    [rest] = statement["rest"]
    assert rest["operation"] == [{"name": "audit-export", "definition": EXPORT.definition, "documentation": "Export."}]
    assert "resource" not in rest  # discovery routes are not resource interactions
    assert "security" not in rest
    assert_valid_fhir(statement, fhir_schema_path)
    with pytest.raises(ValueError, match="no definition"):
        capability_statement(routes, search_params={}, base_url="http://h/fhir")


def test_security_says_smart_on_fhir_or_that_access_control_is_off(fhir_schema_path: Path) -> None:
    routes = [Route("/Task", frozenset({"GET"}))]
    on = Security(
        token_url="http://h/auth/token", smart_configuration_url="http://h/fhir/.well-known/smart-configuration"
    )
    statement = capability_statement(routes, search_params={}, base_url="http://h/fhir", security=on)
    security = statement["rest"][0]["security"]
    assert security["service"][0]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
        "code": "SMART-on-FHIR",
        "display": "SMART-on-FHIR",
    }
    assert security["extension"][0]["extension"] == [{"url": "token", "valueUri": "http://h/auth/token"}]
    assert on.smart_configuration_url in security["description"]
    assert_valid_fhir(statement, fhir_schema_path)
    off = Security(token_url=None, smart_configuration_url=on.smart_configuration_url)
    statement = capability_statement(routes, search_params={}, base_url="http://h/fhir", security=off)
    assert statement["rest"][0]["security"].keys() == {"description"}
    assert_valid_fhir(statement, fhir_schema_path)
