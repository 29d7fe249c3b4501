"""Data layer: TFDS corpora (ArrayRecord, no TensorFlow), tokenizers and grain pipelines.

The trainer's entry point is `build_lm_data(data_cfg, workdir)`, which returns the tokenizer, a
checkpointable training `grain.IterDataset` and deterministic evaluation batches.
"""

from research.data.corpora import load_texts
from research.data.pipeline import LMData, build_lm_data, eval_batches, train_dataset
from research.data.tokenizers import Tokenizer, build_tokenizer, load_tokenizer

__all__ = [
    "LMData",
    "Tokenizer",
    "build_lm_data",
    "build_tokenizer",
    "eval_batches",
    "load_texts",
    "load_tokenizer",
    "train_dataset",
]
