"""Echo: lines back on stream sockets, datagrams back on datagram sockets.

One handler class for every socket kind, so `prefork serve` can bind TCP,
Unix, UDP and Unix-datagram addresses at once with the same handler.

On a stream it is a parking line handler (prefork.ParkingLineHandler): the
pool worker calls handle_line() once per line received and parks the
connection in between, so one worker holds thousands of long-lived clients,
and a reload hands them to the new workers instead of closing them. A last
line without its newline is echoed when the client closes. A datagram
server gives the handler one datagram, which it sends back.
"""

import prefork


class EchoHandler(prefork.ParkingLineHandler):
    def handle_line(self, line):
        self.request.sendall(line)

    def handle_datagram(self, data, sock):
        if self.client_address:                        # an unbound Unix client cannot be answered
            sock.sendto(data, self.client_address)
