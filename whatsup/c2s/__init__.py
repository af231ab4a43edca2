"""The client-to-server side: the I/O-free session core, its socket adapter, the listener and admission."""
