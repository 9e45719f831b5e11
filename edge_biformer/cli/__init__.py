"""The ``edge-biformer`` command line: one module per subcommand, registered in :mod:`.main`."""
