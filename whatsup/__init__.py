"""whatsup: a WhatsApp-style message server built from lightweight processes with mailboxes."""
__version__ = "0.1.0"
