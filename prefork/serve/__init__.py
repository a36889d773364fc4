"""`prefork serve`: settings, launch, control socket, upgrades, systemd, pid file, privileges. Runs in the master.

All of it runs in the process that becomes the master.
"""
