"""The end-to-end tests use the harness of tests/harness.py; its fixtures are in tests/conftest.py."""
