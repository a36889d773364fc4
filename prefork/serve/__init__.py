"""`prefork serve`: settings, launch, control socket, upgrades, systemd, pid file, privileges. Runs in the master.

It runs in the process that becomes the master, but for control_client.py (the
`prefork ctl` process) and the privilege drop (privileges.py) in each child.
"""
