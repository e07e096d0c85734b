"""graft: graft a safety task vector layer-wise into (medical, multimodal) LLM checkpoints."""

__version__ = "0.1.0"
