"""The core: domain objects, ports, the job state machine and the triage service.

Nothing in here imports a framework (Flask, SQLAlchemy, torch, pydicom, fhir.resources, hl7apy);
an import-linter contract in `.importlinter` keeps it that way.
"""
