"""`prefork tune`: the load generator and the tuner that drives it against real `prefork serve` subprocesses."""
