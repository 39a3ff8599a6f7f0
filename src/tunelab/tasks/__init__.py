"""Task kinds: each implements the protocol in base.py; registry.py names them."""
