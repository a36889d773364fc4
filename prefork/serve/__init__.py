"""`prefork serve`: settings, launch, the control socket, upgrades in place, systemd, the pid file, privileges.

All of it runs in the process that becomes the master.
"""
