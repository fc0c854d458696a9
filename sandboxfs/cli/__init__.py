"""The command line: argument parsing and exit statuses only (``main``), and the
subcommands that talk to a running mount (``control_commands``)."""
