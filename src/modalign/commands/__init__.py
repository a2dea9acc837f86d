"""Sub-commands of the ``modalign`` command line, one module each (see ``modalign.cli``)."""
