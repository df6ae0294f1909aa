"""The feature server (PyTriton) and its wire protocol."""
