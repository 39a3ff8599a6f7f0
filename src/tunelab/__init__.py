"""tunelab: fine-tune small open LLMs with LoRA / QLoRA, from validated data to a served model."""

__version__ = "0.1.0"
