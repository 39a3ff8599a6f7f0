"""task sft: instruction chats -> a LoRA causal LM."""
