"""Capabilities, one module each: the only place where the rules live."""
