"""Distilled memories as replay buffers for Avalanche strategies (not built yet).

This package will depend on ``distillmem`` and avalanche-lib; ``distillmem``
never imports it.
"""
