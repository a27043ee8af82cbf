"""Message formats: rules about bytes, with no I/O beyond bytes in and bytes out.

``mime`` parses received mail and renders ours, ``headers`` writes header values that cannot add
a line, ``reports`` reads and writes read receipts (RFC 8098) and reads delivery reports
(RFC 3464), ``xdm`` reads and writes IHE_XDM archives. Services and the gateway both use them.
"""
