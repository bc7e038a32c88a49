"""Prefect flows and the `durian` command line: they only wire tasks together."""
