"""Measuring efficiency: the TTFT bench, FLOP accounting, and probes of the host and its memory.

Layer 4: may import ``models``, ``compression`` and the base modules.
"""
