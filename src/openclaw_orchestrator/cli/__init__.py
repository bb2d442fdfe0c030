"""The command line: ``entry`` (console scripts, argv, the ``openclaw`` hand-off), ``main``
(the Typer commands) and ``render`` (results -> JSON or Rich). Kept empty so that starting
the ``openclaw`` shim imports nothing it does not need."""
