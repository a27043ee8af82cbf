"""IMAP4rev1 access to MonSisra mailboxes (a transport: grammar, protocol, listener; the rules
are in ``services.mail_access``)."""
