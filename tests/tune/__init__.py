"""Tests of prefork/tune/, one module each."""
