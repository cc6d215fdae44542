"""Inverted-file indexes: list storage, IVF-Flat, and the ``load`` dispatcher.

Submodules are imported on use; importing this package compiles nothing.
"""
