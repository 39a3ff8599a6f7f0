"""Training: one composition (run.py), the loop and its session, checkpoints, several
processes, stop signals."""
