"""Our own FUSE transport: the Linux FUSE protocol spoken on /dev/fuse (no libfuse, no pyfuse3).

``wire`` (the struct layouts, pure), ``device`` (mount, unmount, passthrough
ioctls), ``handlers`` (one per opcode: arguments in, ``fs`` operation, reply
out; synchronous) and ``transport`` (the trio loop, INIT, blocking requests in
threads, notifications).  May import ``fs`` and trio; never pyfuse3.
"""
