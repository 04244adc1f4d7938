"""Checkpoints as files: the manifest (commit marker), signatures and digests, what an image dir
must hold, which restore source a create asks for, whether this node can restore it, the rootfs
diff, and export/import archives."""
