"""Services: the messenger's rules (accounts, messaging, presence). No I/O of their own."""
