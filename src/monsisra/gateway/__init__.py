"""MSSanté gateway: SMTP in and out, MIME, IHE_XDM archives, MDN read receipts, TLS."""
