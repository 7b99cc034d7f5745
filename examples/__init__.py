"""Example pipelines and the Python modules they use. Every example runs in the tests."""
