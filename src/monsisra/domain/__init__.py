"""Plain types and pure rules: no I/O here."""
