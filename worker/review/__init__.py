"""The review desk (`jewelmatch review`): a small web app where the warehouse confirms or
corrects matches beside the bag photo, and ops see what is stuck (dead letters, queue
depths, each worker's readiness). It reads the worker's answers from queues of its own and
keeps a bounded history in SQLite; it never loads the model."""
