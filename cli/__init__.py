"""The ``braver`` command line (Typer). Library code lives in ``braver``; this package only parses."""
