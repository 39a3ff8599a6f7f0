"""`tunelab studio`: a web app over a workspace to prepare data, launch, watch, compare,
evaluate and chat with runs."""
