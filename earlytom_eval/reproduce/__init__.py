"""From an experiment grid to the paper's tables: grid parsing, the missing-things check, the resumable runner.

Layer 7: may import every layer below (``report``, ``lmms``, ``efficiency``, ``models``, ``compression``, base).
"""
