"""What operators read: structured logs, Prometheus metrics, and the liveness/readiness
probes served over HTTP."""
