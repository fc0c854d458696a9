"""``sandboxfs run``: one command in a fresh sandbox (``command``), confined with Linux
namespaces (``confine``), in a running mount or a private one (``private_mount``).

A front end: it talks to a mount only through the control client.
"""
