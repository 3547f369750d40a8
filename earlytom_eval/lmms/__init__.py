"""The lmms-eval glue: the entry-point manifest, dataset locations, the model wrapper, the per-sample efficiency
log and the smoke data.

Layer 5: may import ``efficiency``, ``models``, ``compression`` and the base modules. Importing this package (or
``manifest``, ``datasets``, ``efficiency_log``, ``smoke_data``) imports neither torch nor lmms-eval.
"""
