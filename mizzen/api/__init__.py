"""The typed objects API without I/O: kinds, quantities, selectors, defaults, validation.

The store's Objects service, the CLI and the manifest layer share these so every
entry point accepts and rejects the same objects.
"""
