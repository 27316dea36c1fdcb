"""Distilled memories as compact uploads from Flower clients to a KRR server (not built yet).

This package will depend on ``distillmem`` and flwr; ``distillmem`` never imports it.
"""
