"""The tables from what runs left on disk: loading runs, cells, tables, rendering (md/csv/tex), plots, published
numbers.

Layer 6: may import ``lmms``, ``efficiency``, ``models``, ``compression`` and the base modules.
"""
