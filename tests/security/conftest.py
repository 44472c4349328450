"""The security tests drive the same real app as the end-to-end tests."""

from tests.e2e.conftest import bot_env, harness, harness_any_db  # noqa: F401
