"""Shared fixtures live in tests/fixtures/*; they are registered here."""

pytest_plugins = [
    "tests.fixtures.server",
    "tests.fixtures.rawhttp",
    "tests.fixtures.redis",
    "tests.fixtures.store",
]
