"""Plain typed values of the VIP-tier domain: no I/O here."""
