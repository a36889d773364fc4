"""Tests that run pools as real processes (a package, so that module names may repeat tests/ ones)."""
