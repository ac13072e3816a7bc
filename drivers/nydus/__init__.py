"""nydus RAFS v6 format core (see the docstring written at the end)."""
