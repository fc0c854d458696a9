"""``sandboxfs worker``: a remote-execution bot whose input roots are sandboxfs views of a CAS.

* ``engine``: the gRPC channel to the engine (CAS, ByteStream, Bots), with retries.
* ``fetch``: input trees and files from the CAS into the local content store, lazily.
* ``action``: one lease's action: sandbox, command, outputs, ActionResult.
* ``outputs``: outputs as REAPI describes them (files, Trees, symlinks).
* ``bots``: bot sessions and their leases (the Remote Workers API).
* ``main``: the command line's state directory, mount and lifetime.

docs/worker.md describes running a fleet of them.
"""
