"""Every code system and code the compliance package writes, in one place.

External terminologies are used where the concept is exact; radtriage's own codes live under the same base URL
as the FHIR door's (``radtriage.fhir.terminology.RADTRIAGE_FHIR_BASE``; a test keeps the two equal). The base is
in the reserved ``.example`` domain (RFC 2606): the URLs are stable identifiers, not pages.

Sources checked for the external codes:

* IHE ITI Basic Audit Log Patterns (BALP) 1.1.3, https://profiles.ihe.net/ITI/BALP/ : profiles
  ``IHE.BasicAudit.Create`` / ``PatientCreate``, ``Read`` / ``PatientRead``, ``Query`` / ``PatientQuery``,
  ``Update`` / ``PatientUpdate``, ``Delete`` / ``PatientDelete`` and the OAuth access-token-use pattern.
* FHIR R4 AuditEvent (http://hl7.org/fhir/R4/auditevent.html) and its value sets (audit-event-type, DICOM DCM
  event and subtype codes from DICOM PS3.16, audit-entity-type, object-role, network-type, security-source-type).
* HL7 AI Transparency on FHIR (http://hl7.org/fhir/uv/aitransparency): the ``AIAST`` security label from
  ``v3-ObservationValue`` and the AI Provenance pattern (Device as author, inputs as entities).
"""

from __future__ import annotations

from typing import Final, NamedTuple


class Code(NamedTuple):
    """One coding: (system, code, display)."""

    system: str
    code: str
    display: str

    def as_fhir(self) -> dict[str, str]:
        return {"system": self.system, "code": self.code, "display": self.display}


RADTRIAGE_FHIR_BASE: Final = "https://radtriage.example/fhir"

# ---------------------------------------------------------------- radtriage's own systems

#: The audit event catalogue (`radtriage.compliance.audit.EventKind` codes), used as AuditEvent.subtype.
AUDIT_EVENT_SYSTEM: Final = f"{RADTRIAGE_FHIR_BASE}/CodeSystem/audit-event"
#: The roles of `radtriage.compliance.auth.Role` (ehr, ris, compliance, admin), in AuditEvent.agent.role.
ROLE_SYSTEM: Final = f"{RADTRIAGE_FHIR_BASE}/CodeSystem/role"
#: Identifier system for registered OAuth clients and HL7 sending applications (AuditEvent.agent.who).
CLIENT_ID_SYSTEM: Final = f"{RADTRIAGE_FHIR_BASE}/NamingSystem/client-id"
#: Identifier system for people acting through the command line or the web (AuditEvent.agent.who).
USER_ID_SYSTEM: Final = f"{RADTRIAGE_FHIR_BASE}/NamingSystem/user-id"
#: Identifier system for this service as the audit source (AuditEvent.source.observer).
SERVICE_ID_SYSTEM: Final = f"{RADTRIAGE_FHIR_BASE}/NamingSystem/service"
#: Identifier system for a model artefact's sha256 (the same one the FHIR door writes on Observation.device).
MODEL_SHA256_SYSTEM: Final = f"{RADTRIAGE_FHIR_BASE}/NamingSystem/model-sha256"
#: Extension carried by exported AuditEvents: their place in the hash chain (see `export.py`).
AUDIT_CHAIN_EXTENSION: Final = f"{RADTRIAGE_FHIR_BASE}/StructureDefinition/audit-chain"
#: Why a request was refused by access control (OperationOutcome.issue.details): the OAuth 2.0 error codes of
#: RFC 6749 5.2 and RFC 6750 3.1, plus ``missing_token``.
AUTH_ERROR_SYSTEM: Final = f"{RADTRIAGE_FHIR_BASE}/CodeSystem/auth-error"
#: Code for "untrained placeholder model" (the FHIR door's triage code system).
TRIAGE_SYSTEM: Final = f"{RADTRIAGE_FHIR_BASE}/CodeSystem/triage"

# ---------------------------------------------------------------- AuditEvent (FHIR R4 + BALP)

AUDIT_EVENT_TYPE_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL_INTERACTION_SYSTEM: Final = "http://hl7.org/fhir/restful-interaction"
DCM_SYSTEM: Final = "http://dicom.nema.org/resources/ontology/DCM"
AUDIT_ENTITY_TYPE_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/object-role"
SECURITY_SOURCE_TYPE_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/security-source-type"
#: R4 AuditEvent.agent.purposeOfUse is bound to v3-PurposeOfUse, whose codes live in v3-ActReason.
PURPOSE_OF_USE_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
BALP_PROFILE_BASE: Final = "https://profiles.ihe.net/ITI/BALP/StructureDefinition"
BALP_USER_AGENT_TYPES: Final = "https://profiles.ihe.net/ITI/BALP/CodeSystem/UserAgentTypes"
BALP_ENTITY_TYPES: Final = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType"

REST_OPERATION: Final = Code(AUDIT_EVENT_TYPE_SYSTEM, "rest", "Restful Operation")

# DICOM PS3.16 audit event IDs (AuditEvent.type) and event type codes (AuditEvent.subtype).
DCM_APPLICATION_ACTIVITY: Final = Code(DCM_SYSTEM, "110100", "Application Activity")
DCM_AUDIT_LOG_USED: Final = Code(DCM_SYSTEM, "110101", "Audit Log Used")
DCM_INSTANCES_ACCESSED: Final = Code(DCM_SYSTEM, "110103", "DICOM Instances Accessed")
DCM_INSTANCES_TRANSFERRED: Final = Code(DCM_SYSTEM, "110104", "DICOM Instances Transferred")
DCM_STUDY_DELETED: Final = Code(DCM_SYSTEM, "110105", "DICOM Study Deleted")
DCM_EXPORT: Final = Code(DCM_SYSTEM, "110106", "Export")
DCM_IMPORT: Final = Code(DCM_SYSTEM, "110107", "Import")
DCM_PATIENT_RECORD: Final = Code(DCM_SYSTEM, "110110", "Patient Record")
DCM_SECURITY_ALERT: Final = Code(DCM_SYSTEM, "110113", "Security Alert")
DCM_USER_AUTHENTICATION: Final = Code(DCM_SYSTEM, "110114", "User Authentication")
DCM_APPLICATION_START: Final = Code(DCM_SYSTEM, "110120", "Application Start")
DCM_APPLICATION_STOP: Final = Code(DCM_SYSTEM, "110121", "Application Stop")
DCM_LOGIN: Final = Code(DCM_SYSTEM, "110122", "Login")
DCM_LOGOUT: Final = Code(DCM_SYSTEM, "110123", "Logout")
DCM_SECURITY_CONFIGURATION: Final = Code(DCM_SYSTEM, "110129", "Security Configuration")
DCM_SOFTWARE_CONFIGURATION: Final = Code(DCM_SYSTEM, "110131", "Software Configuration")
DCM_USE_OF_RESTRICTED_FUNCTION: Final = Code(DCM_SYSTEM, "110132", "Use of Restricted Function")

# Agent types: BALP puts the requesting client in "Source Role ID" and the server in "Destination Role ID"
# (for queries too, by DICOM convention, although the data flows the other way).
DCM_SOURCE_ROLE: Final = Code(DCM_SYSTEM, "110153", "Source Role ID")
DCM_DESTINATION_ROLE: Final = Code(DCM_SYSTEM, "110152", "Destination Role ID")
DCM_APPLICATION: Final = Code(DCM_SYSTEM, "110150", "Application")
BALP_OAUTH_USER: Final = Code(BALP_USER_AGENT_TYPES, "UserOauthAgent", "User OAuth Agent participant")
#: BALP: an OAuth token's jti is recorded in agent.policy with this prefix (after RFC 3553 URN rules).
OAUTH_JTI_URN_PREFIX: Final = "urn:ietf:params:oauth:jti:"

ENTITY_PERSON: Final = Code(AUDIT_ENTITY_TYPE_SYSTEM, "1", "Person")
ENTITY_SYSTEM_OBJECT: Final = Code(AUDIT_ENTITY_TYPE_SYSTEM, "2", "System Object")
ENTITY_OTHER: Final = Code(AUDIT_ENTITY_TYPE_SYSTEM, "4", "Other")
ENTITY_REQUEST_ID: Final = Code(BALP_ENTITY_TYPES, "XrequestId", "X-Request-Id")
ROLE_PATIENT: Final = Code(OBJECT_ROLE_SYSTEM, "1", "Patient")
ROLE_REPORT: Final = Code(OBJECT_ROLE_SYSTEM, "3", "Report")
ROLE_DOMAIN_RESOURCE: Final = Code(OBJECT_ROLE_SYSTEM, "4", "Domain Resource")
ROLE_JOB: Final = Code(OBJECT_ROLE_SYSTEM, "20", "Job")
ROLE_QUERY: Final = Code(OBJECT_ROLE_SYSTEM, "24", "Query")
APPLICATION_SERVER: Final = Code(SECURITY_SOURCE_TYPE_SYSTEM, "4", "Application Server")

#: AuditEvent.agent.network.type (FHIR R4 network-type): 1 machine name, 2 IP address, 5 URI.
NETWORK_MACHINE_NAME: Final = "1"
NETWORK_IP_ADDRESS: Final = "2"
NETWORK_URI: Final = "5"

#: Purposes of use this service records (v3-PurposeOfUse, codes from v3-ActReason).
PURPOSES_OF_USE: Final[dict[str, str]] = {
    "TREAT": "treatment",
    "ETREAT": "emergency treatment",
    "HOPERAT": "healthcare operations",
    "HSYSADMIN": "health system administration",
    "HCOMPL": "health compliance",
    "HTEST": "test health data",
}

# ---------------------------------------------------------------- provenance (AI transparency)

#: HL7 v3 ObservationValue "AIAST": "Artificial Intelligence asserted" (security label, meta.security),
#: recommended by HL7 AI Transparency on FHIR (ValueSet ProvenanceVS) to mark AI-generated resources.
AIAST: Final = Code(
    "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "AIAST", "Artificial Intelligence asserted"
)
PROVENANCE_AUTHOR: Final = Code("http://terminology.hl7.org/CodeSystem/provenance-participant-type", "author", "Author")
DATA_OPERATION_CREATE: Final = Code("http://terminology.hl7.org/CodeSystem/v3-DataOperation", "CREATE", "create")
