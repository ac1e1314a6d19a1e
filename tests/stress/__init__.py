"""Slow reliability scripts of issue 7 (load, faults), run by `make stress` (`python -m tests.stress.run`); not
collected by pytest (no file here starts with test_)."""
