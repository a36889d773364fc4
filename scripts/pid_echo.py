"""Echoes each line after the pid of the worker that answered it: b"1234|" + line.

scripts/many_connections.py serves it (hup-1000) to see which worker holds
a connection before and after a reload: a parked connection handed over to
a new worker answers with the new worker's pid.
"""

import os

import prefork


class PidEchoHandler(prefork.ParkingLineHandler):
    def handle_line(self, line):
        self.request.sendall(b"%d|" % os.getpid() + line)
