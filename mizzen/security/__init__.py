"""TLS material and credentials: the cluster CA, issued certificates, role tokens."""
