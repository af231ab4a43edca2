"""Command lines: ``whatsupd`` (the server) and ``whatsup`` (the client)."""
