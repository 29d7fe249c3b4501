"""A JAX/Flax library of transformer blocks composed into BERT-, GPT- and T5-style models."""
