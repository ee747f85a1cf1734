"""Shared builders for the tests, not tests: tiny trained models, image files of odd kinds, miniature
dataset layouts, the headless browser's settings.

pytest collects nothing here (no test_*.py). Test files import these as `support.<module>` (pyproject's
pytest `pythonpath` puts tests/ on the path); fixtures that several files share live in tests/conftest.py.
"""
