"""Unit tests of the REST gateway."""
