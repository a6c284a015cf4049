"""A DNS server on loopback for tests: answers TXT queries from a dict, NXDOMAIN for the rest
(DKIM keys of test domains), over UDP and TCP, so that the real resolver code is exercised without
any traffic leaving the machine."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager


def _answer(wire: bytes, records: dict[str, list[bytes]]) -> bytes:
    import dns.flags
    import dns.message
    import dns.rcode
    import dns.rdataclass
    import dns.rdatatype
    import dns.rrset

    query = dns.message.from_wire(wire)
    response = dns.message.make_response(query)
    response.flags |= dns.flags.AA
    for q in query.question:
        name = q.name.to_text().lower().rstrip(".")
        values = records.get(name)
        if values is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif q.rdtype == dns.rdatatype.TXT:
            strings = [" ".join('"' + v[i : i + 255].decode() + '"' for i in range(0, len(v), 255)) for v in values]
            response.answer.append(dns.rrset.from_text(q.name, 300, dns.rdataclass.IN, dns.rdatatype.TXT, *strings))
    return response.to_wire()


class LoopbackDns:
    def __init__(self, records: dict[str, list[bytes]]) -> None:
        self.records = {k.lower().rstrip("."): v for k, v in records.items()}
        self.queries: list[str] = []
        outer = self

        class Udp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                try:
                    import dns.message

                    outer.queries.extend(q.name.to_text() for q in dns.message.from_wire(data).question)
                    sock.sendto(_answer(data, outer.records), self.client_address)
                except Exception:  # noqa: S110 - a junk query gets no answer
                    pass

        self._udp = socketserver.ThreadingUDPServer(("127.0.0.1", 0), Udp)
        self.port = self._udp.server_address[1]
        self._thread = threading.Thread(target=self._udp.serve_forever, name="test-dns", daemon=True)

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> LoopbackDns:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._udp.shutdown()
        self._udp.server_close()


@contextmanager
def loopback_dns(records: dict[str, list[bytes]]) -> Iterator[LoopbackDns]:
    server = LoopbackDns(records).start()
    try:
        yield server
    finally:
        server.stop()


def closed_udp_port() -> int:
    """A loopback UDP port nothing listens on (a resolver that never answers)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return int(port)
