"""Putting a worker together and running it: wiring, the refusal to serve a model that is not
current, re-embedding an index under a new model."""
