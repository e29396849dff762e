"""`jewelmatch bench`: accuracy, latency, throughput, scale and model benchmarks."""
