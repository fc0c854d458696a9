"""The sandboxfs benchmark harness: ``python -m bench [--quick|--tiny] [--out DIR]``.

Compares sandboxfs with the other ways to build a build sandbox (symlink forests,
hard-link forests, copies, running in place) and with bindfs for raw FUSE I/O.
Never imported by ``sandboxfs``; see docs/benchmarks.md for what it measures.

Modules: ``tree`` (synthetic inputs), ``strategies`` (how a sandbox is built),
``mounts`` (sandboxfs/bindfs children with guaranteed cleanup), ``measure``
(timing, progress, interleaving), ``scenarios/*`` (one per scenario),
``report`` (JSON -> docs/benchmarks.md and plots), ``cli`` (the entry point).
"""
