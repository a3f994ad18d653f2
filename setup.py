from setuptools import find_packages, setup

setup(
    name="radtriage",
    version="0.1.0",
    description="Chest X-ray triage service speaking FHIR, HL7 v2 and DICOMweb",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["radtriage", "radtriage.*"]),
    include_package_data=True,
    package_data={
        "radtriage": ["**/*.json", "**/*.toml", "**/*.ini", "**/*.mako", "**/*.md", "**/*.pt", "**/*.csv", "**/*.png"]
    },
    entry_points={"console_scripts": ["radtriage = radtriage.cli:main"]},
)
