"""The OCI runtime's side of things: the bundle's spec (config.json), runc-style log lines,
and test/demo bundles. (runc's argv tables are runc_grit.argv: on the pass-through path.)"""
