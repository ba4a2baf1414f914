"""Fixtures for the inference tests: the shared embedded server lives in tests/conftest.py."""

from __future__ import annotations

from tests.conftest import SERVER_ARGS  # noqa: F401  (re-exported for the inference tests)
