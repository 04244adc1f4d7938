"""Checkpoints as OCI images in a registry: runc-grit push / pull, restore-from oci://."""
