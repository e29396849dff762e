"""The stages of the ranking, one module each: its settings, its fitted (frozen) state, and
what it does to a scan's search or candidates. `worker.matching.ranking` composes them in one
list; `worker.matching.fitting` fits them; nothing else ranks."""
