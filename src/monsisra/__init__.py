"""MonSisra: secure messaging and telemedicine for French health professionals."""

__version__ = "0.1.0"
