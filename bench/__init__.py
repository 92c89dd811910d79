"""salbench: a benchmark and evaluation harness for saliency methods on image classifiers."""

__version__ = "0.1.0"
