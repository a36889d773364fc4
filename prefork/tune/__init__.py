"""`prefork tune`: the load generator and the tuner. Runs in the `prefork tune` process and its clients."""
