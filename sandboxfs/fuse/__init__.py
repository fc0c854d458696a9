"""What talks to the kernel: the transports that serve ``sandboxfs.fs`` to FUSE."""
