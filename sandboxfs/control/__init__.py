"""The control socket: framing (bytes to messages), protocol (what messages mean), the
server, reconfiguration (applying requests to the tree), and the Python clients.

``framing`` and ``protocol`` are pure (no trio, no sockets); ``server`` and
``reconfig`` run on the trio loop and change the tree only through
``sandboxfs.tree``, and the kernel's caches only through a notifier.
"""
