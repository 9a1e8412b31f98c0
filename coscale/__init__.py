"""coscale: serve AI models on heterogeneous machines, fast and cheap."""

__version__ = "0.1.0"
