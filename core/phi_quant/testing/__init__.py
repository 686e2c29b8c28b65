"""Test helpers: tiny checkpoint factory, prompts, conformance kit."""
