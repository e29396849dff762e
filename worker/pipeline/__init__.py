"""What each message means, without AMQP: from a delivery to the results to publish and how
to settle it (scans, catalog events, confirmations), images fetched from storage and decoded,
one failure policy."""
