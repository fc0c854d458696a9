"""The in-memory mapping tree: what the mount shows, and where each name comes from.

Owns the mapping values and their path rules, the node kinds, building a
tree from mappings (all or nothing), the sandbox operations on it, the
existence checks of host paths, and the groups named by their content.
Pure: imports neither pyfuse3 nor trio (a test checks), and only reads the
host filesystem (lstat, listings, safe directory fds).
"""
