"""Integration tests of the common runtime against real servers."""
