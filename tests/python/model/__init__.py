"""Reference models the stateful tests check the engine against (test_rules_model.py)."""
