"""Fixtures shared by the whole suite live in tests/support; each module registers its own."""

pytest_plugins = [
    "tests.support.orthanc",
    "tests.support.data",
    "tests.support.postgres",
    "tests.support.redis",
]
