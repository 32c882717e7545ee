"""The shared base: atomic writes, params and the schema they are checked with, the settings' vocabulary, scoring. It
imports no other layer."""
