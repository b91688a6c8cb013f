"""The Redis layer: every Redis command, the connection policy, secrets, the embedded server
and the alert reader."""
