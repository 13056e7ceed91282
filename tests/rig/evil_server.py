#!/usr/bin/env python3
"""Malicious authoritative server for evil.test, part of the dnsledger test rig.

It answers names under evil.test correctly and with AA=1, but stuffs every positive answer
with out-of-bailiwick records that a careless cache (or passive DNS sensor) would accept:

  * authority:  bank.com.  NS  ns.evil.test.        (forged delegation of another zone)
  * additional: www.bank.com.  A  6.6.6.6            (forged address of another zone)
  * cname.evil.test is a CNAME to www.bank.com. and the answer section carries a forged
    www.bank.com. A 6.6.6.6 after it (a resolver must re-query bank.com's servers).

NSD refuses to serve data outside its zones, hence this small stdlib-only server with
hand-made wire format. UDP and TCP on the given address; EDNS: a query with OPT gets a
minimal OPT back (UDP size 1232, no flags, no options). Names outside evil.test: REFUSED.

Usage: evil_server.py ADDRESS [PORT]   (port 53 by default; ADDRESS is also ns.evil.test's A)
One log line per query goes to stderr.
"""

import socket
import struct
import sys
import threading

ZONE = ("evil", "test")
TTL = 3600
FORGED_ADDR = "6.6.6.6"

TYPE_A, TYPE_NS, TYPE_CNAME, TYPE_SOA, TYPE_OPT, TYPE_ANY = 1, 2, 5, 6, 41, 255
CLASS_IN = 1
RCODE_FORMERR, RCODE_NXDOMAIN, RCODE_NOTIMP, RCODE_REFUSED = 1, 3, 4, 5


def encode_name(labels):
    out = b""
    for label in labels:
        raw = label.encode("ascii")
        out += struct.pack("!B", len(raw)) + raw
    return out + b"\x00"


def name(text):
    return encode_name([label for label in text.rstrip(".").split(".") if label])


def rr(owner, rtype, rdata, ttl=TTL):
    """One resource record; owner is wire format (a name or a compression pointer)."""
    return owner + struct.pack("!HHIH", rtype, CLASS_IN, ttl, len(rdata)) + rdata


def a_rdata(addr):
    return socket.inet_aton(addr)


class Zone:
    """The evil.test data; ns_addr is the server's own address (glue for ns.evil.test)."""

    def __init__(self, ns_addr):
        soa = name("ns.evil.test") + name("hostmaster.evil.test") + struct.pack(
            "!IIIII", 2024010101, 3600, 900, 604800, 300
        )
        self.soa = soa
        self.ns_addr = ns_addr
        # owner (lower-case labels) -> list of (type, rdata)
        self.records = {
            ZONE: [(TYPE_SOA, soa), (TYPE_NS, name("ns.evil.test"))],
            ("ns",) + ZONE: [(TYPE_A, a_rdata(ns_addr))],
            ("www",) + ZONE: [(TYPE_A, a_rdata("203.0.113.80"))],
            ("cname",) + ZONE: [(TYPE_CNAME, name("www.bank.com"))],
        }


def parse_question(msg):
    """Returns (labels as sent, qtype, qclass, offset after question) or None if malformed."""
    off = 12
    labels = []
    while True:
        if off >= len(msg):
            return None
        length = msg[off]
        off += 1
        if length == 0:
            break
        if length & 0xC0 or off + length > len(msg):
            return None  # no compression in a lone question
        labels.append(msg[off : off + length].decode("ascii", "replace"))
        off += length
    if off + 4 > len(msg):
        return None
    qtype, qclass = struct.unpack("!HH", msg[off : off + 4])
    return labels, qtype, qclass, off + 4


def has_opt(msg, qd_end):
    """True if the additional section holds an OPT record (queries carry nothing else)."""
    _, _, ancount, nscount, arcount = struct.unpack("!HHHHH", msg[2:12])
    if ancount or nscount or not arcount:
        return False
    # OPT owner is the root: a single zero byte, then the type
    if len(msg) < qd_end + 3 or msg[qd_end] != 0:
        return False
    return struct.unpack("!H", msg[qd_end + 1 : qd_end + 3])[0] == TYPE_OPT


def answer(zone, msg):
    """Builds the response to one query message, or None to stay silent."""
    if len(msg) < 12:
        return None
    qid, flags = struct.unpack("!HH", msg[:4])
    if flags & 0x8000:
        return None  # a response: ignore
    opcode = (flags >> 11) & 0xF
    rd = flags & 0x0100
    qdcount = struct.unpack("!H", msg[4:6])[0]
    question = parse_question(msg) if qdcount == 1 else None

    def header(rcode, aa, qd, an, ns, ar):
        f = 0x8000 | (opcode << 11) | (0x0400 if aa else 0) | rd | rcode
        return struct.pack("!HHHHHH", qid, f, qd, an, ns, ar)

    if question is None:
        return header(RCODE_FORMERR, False, 0, 0, 0, 0), "FORMERR"
    labels, qtype, qclass, qd_end = question
    qsection = msg[12:qd_end]  # echoed verbatim: keeps the query's 0x20 case
    # minimal OPT: root owner, UDP size 1232 in the class field, no extended flags, no options
    opt = b"\x00" + struct.pack("!HHIH", TYPE_OPT, 1232, 0, 0) if has_opt(msg, qd_end) else b""
    ar_opt = 1 if opt else 0
    qname_text = ".".join(labels) + "."
    if opcode != 0:
        return header(RCODE_NOTIMP, False, 1, 0, 0, ar_opt) + qsection + opt, "NOTIMP"

    key = tuple(label.lower() for label in labels)
    if qclass != CLASS_IN or key[-2:] != ZONE:
        return header(RCODE_REFUSED, False, 1, 0, 0, ar_opt) + qsection + opt, "REFUSED"

    qname_ptr = b"\xc0\x0c"  # the question name, as the resolver spelled it
    zone_owner = name("evil.test")
    soa_rr = rr(zone_owner, TYPE_SOA, zone.soa, ttl=300)
    node = zone.records.get(key)
    if node is None:
        return header(RCODE_NXDOMAIN, True, 1, 0, 1, ar_opt) + qsection + soa_rr + opt, "NXDOMAIN"

    answers = [rr(qname_ptr, t, rdata) for t, rdata in node if qtype in (t, TYPE_ANY)]
    cname = [rdata for t, rdata in node if t == TYPE_CNAME]
    if not answers and cname:
        answers = [rr(qname_ptr, TYPE_CNAME, cname[0])]
    if not answers:
        return header(0, True, 1, 0, 1, ar_opt) + qsection + soa_rr + opt, "NODATA"
    if cname:
        # the forged target of the CNAME, in the answer section
        answers.append(rr(cname[0], TYPE_A, a_rdata(FORGED_ADDR)))

    authority = [
        rr(zone_owner, TYPE_NS, name("ns.evil.test")),
        rr(name("bank.com"), TYPE_NS, name("ns.evil.test")),  # forged, out of bailiwick
    ]
    additional = [
        rr(name("ns.evil.test"), TYPE_A, a_rdata(zone.ns_addr)),
        rr(name("www.bank.com"), TYPE_A, a_rdata(FORGED_ADDR)),  # forged, out of bailiwick
    ]
    body = qsection + b"".join(answers) + b"".join(authority) + b"".join(additional) + opt
    head = header(0, True, 1, len(answers), len(authority), len(additional) + ar_opt)
    return head + body, "NOERROR"


def log(transport, peer, msg, outcome):
    q = parse_question(msg) if len(msg) >= 12 else None
    what = "%s type %d" % (".".join(q[0]) + ".", q[1]) if q else "?"
    print("%s %s:%d %s -> %s" % (transport, peer[0], peer[1], what, outcome), file=sys.stderr, flush=True)


def serve_udp(sock, zone):
    while True:
        msg, peer = sock.recvfrom(65535)
        result = answer(zone, msg)
        if result:
            log("udp", peer, msg, result[1])
            sock.sendto(result[0], peer)


def recv_exact(conn, n):
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def serve_tcp_conn(conn, peer, zone):
    with conn:
        conn.settimeout(10)
        try:
            while True:
                head = recv_exact(conn, 2)
                if head is None:
                    return
                msg = recv_exact(conn, struct.unpack("!H", head)[0])
                if msg is None:
                    return
                result = answer(zone, msg)
                if result:
                    log("tcp", peer, msg, result[1])
                    conn.sendall(struct.pack("!H", len(result[0])) + result[0])
        except OSError:
            return


def serve_tcp(sock, zone):
    while True:
        conn, peer = sock.accept()
        threading.Thread(target=serve_tcp_conn, args=(conn, peer, zone), daemon=True).start()


def main():
    if len(sys.argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    addr = sys.argv[1]
    port = int(sys.argv[2]) if len(sys.argv) == 3 else 53
    if not addr.startswith("127."):
        sys.exit("evil_server.py: refusing to listen outside 127.0.0.0/8: " + addr)
    zone = Zone(addr)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((addr, port))
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind((addr, port))
    tcp.listen(16)
    threading.Thread(target=serve_tcp, args=(tcp, zone), daemon=True).start()
    print("evil_server listening on %s port %d (udp, tcp)" % (addr, port), file=sys.stderr, flush=True)
    serve_udp(udp, zone)


if __name__ == "__main__":
    main()
