"""radtriage: chest X-ray triage that speaks the hospital's standards (FHIR, HL7 v2, DICOMweb)."""

__version__ = "0.1.0"
