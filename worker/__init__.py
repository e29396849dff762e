"""jewelmatch worker: consumes scan and catalog events, matches jewels, publishes results."""
