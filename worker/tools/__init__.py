"""Off the production path: the in-process demo and its generated catalog, seeding a running
stack, folder data sets, terminal commands and the benchmarks."""
