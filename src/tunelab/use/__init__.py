"""Using a finished run: open it, then generate, classify, evaluate, predict, chat."""
