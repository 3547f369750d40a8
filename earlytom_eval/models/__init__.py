"""The transformers integration: LLaVA-OneVision with a compression method, the LLM run layer by layer, offline
presets and their tokenizer.

Layer 3: may import ``compression`` and the base modules.
"""
