"""The AMQP side: topology, confirmed publishing, the connection loop, scans-first batching,
settlement and the trust rule for headers, the broker definitions, and the client that
integrators and tests use to talk to a worker."""
