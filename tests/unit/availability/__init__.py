"""Unit tests of the availability pure core."""
