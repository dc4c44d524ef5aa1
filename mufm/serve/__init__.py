"""Serving the exported SavedModel over TF Serving's REST API (`python -m mufm.serve
--model_dir=DIR`): the conventions (rest.py), the loaded versions (models.py), request
batching (batching.py), the HTTP server (server.py) and a small client (client.py)."""
