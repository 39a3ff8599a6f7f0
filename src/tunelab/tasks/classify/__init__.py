"""task classify: text tables -> a class head with LoRA."""
