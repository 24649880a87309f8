"""The ``cddfuse`` command line (thin: parses arguments, calls the library, prints results)."""
