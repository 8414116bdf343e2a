"""effort-server: control how hard a reasoning model thinks.

The package maps onto the repository's folders:
  effort_server            this folder: the `effort` command (cli) and the contract both halves import
  effort_server.contract   manifest schema, think markers, router scoring
  effort_server.server     server/: the OpenAI-compatible API on vLLM (imports nothing of training)
  effort_server.training   training/: the base model, the RL recipes, the evaluator, router fitting
"""
