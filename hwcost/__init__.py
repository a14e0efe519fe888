"""hwcost: what a network costs on a device, and the best network within a budget.

The CLI (``hwcost ...``) is a thin layer over :mod:`hwcost.api`.
"""
__version__ = "0.1.0"
