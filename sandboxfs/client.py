"""The public import path of the Python clients: ``from sandboxfs.client import Client``.

The code lives in ``sandboxfs.control.client``; build tools import it from here.
"""

from sandboxfs.control.client import AsyncClient, Client, PreparedMappings, prepare

__all__ = ["AsyncClient", "Client", "PreparedMappings", "prepare"]
