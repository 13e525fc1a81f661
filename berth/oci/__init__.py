"""OCI image and runtime specification types used across Berth."""
