"""Integration tests of the REST gateway against real gRPC servers."""
