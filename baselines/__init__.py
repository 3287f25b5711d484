"""Baselines on the shared training engine, one module per method.

Each method is registered through the ``coalora.methods`` entry-point group in
``pyproject.toml`` (``coalora.methods.registered_methods``); importing this package
registers nothing, and ``coalora`` never imports it.
"""
