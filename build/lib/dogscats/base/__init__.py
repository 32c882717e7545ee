"""The shared base: atomic writes, params and the schema they are checked with, the settings' vocabulary, scoring, each
backbone's native side. It imports no other layer."""
