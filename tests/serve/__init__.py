"""Tests of prefork/serve/, one module each."""
