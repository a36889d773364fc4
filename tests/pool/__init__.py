"""Tests of prefork/pool/, one module each."""
