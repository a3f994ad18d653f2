"""CDS Hooks door: radtriage as a CDS Hooks 2.0 service an EHR registers (`api`). Like the FHIR and HL7 doors it
maps a protocol onto the core and holds no business logic; it imports neither of them."""
