"""The contract between server and training."""
