//! The upstream tap: a hickory `RuntimeProvider` whose UDP sockets and TCP streams copy every
//! query the recursor sends and every response it receives, wire bytes exactly as they crossed
//! the socket, with both ends' addresses and the times. There is no callback in the recursor;
//! the transport is the seam (hickory's blanket `ConnectionProvider for RuntimeProvider` makes
//! the provider usable by the recursor). Each exchange becomes dnstap RESOLVER_QUERY /
//! RESOLVER_RESPONSE frames handed to the [`Emitter`] without ever waiting: resolution never
//! waits on dnstap.
//!
//! Neighbours: [`super::zones`] names the zone each server is asked for; [`super::emit`]
//! carries the frames to the sensor.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_io::{AsyncRead, AsyncWrite};
use hickory_proto::op::Message;
use hickory_proto::rr::Name;
use hickory_proto::serialize::binary::BinDecodable;
use hickory_resolver::net::runtime::iocompat::AsyncIoTokioAsStd;
use hickory_resolver::net::runtime::{
    DnsTcpStream, DnsUdpSocket, RuntimeProvider, TokioHandle, TokioRuntimeProvider, TokioTime,
};

use super::ResolverStats;
use super::emit::Emitter;
use super::zones::ZoneTracker;
use crate::dnstap::{DnstapEvent, DnstapMessage, MessageType, SocketFamily, SocketProtocol, Timestamp, encode};

/// Outstanding queries remembered per socket or stream; past it the oldest are forgotten
/// (their responses then go untapped, counted as `unmatched`).
const MAX_PENDING: usize = 4096;

/// What the tap needs from the resolver's configuration.
pub(crate) struct TapConfig {
    pub identity: Option<Bytes>,
    pub version: Option<Bytes>,
    /// Emit RESOLVER_QUERY frames as well as RESOLVER_RESPONSE.
    pub queries: bool,
    /// Source addresses for upstream sockets (also makes dnstap's query_address exact).
    pub source_v4: Option<IpAddr>,
    pub source_v6: Option<IpAddr>,
}

/// Shared by every socket the provider makes.
pub(crate) struct Tap {
    config: TapConfig,
    zones: ZoneTracker,
    emitter: Emitter,
    stats: Arc<ResolverStats>,
}

/// A query as it went out, kept until its response comes back.
#[derive(Clone)]
struct Sent {
    zone: Option<Name>,
    time: SystemTime,
    /// The question section as sent, to tell the response from a stray datagram with the
    /// right id (UDP).
    question: Vec<u8>,
}

/// The question section of a wire message (name without compression, type, class).
fn question(wire: &[u8]) -> Option<&[u8]> {
    let mut at = 12;
    loop {
        let len = *wire.get(at)? as usize;
        if len & 0xc0 != 0 || at - 12 > 255 {
            return None;
        }
        at += 1 + len;
        if len == 0 {
            break;
        }
    }
    wire.get(12..at + 4)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

pub(crate) fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp { sec: d.as_secs(), nsec: d.subsec_nanos() }
}

fn msg_id(wire: &[u8]) -> Option<u16> {
    wire.first_chunk::<2>().map(|b| u16::from_be_bytes(*b))
}

impl Tap {
    pub(crate) fn new(config: TapConfig, roots: &[IpAddr], emitter: Emitter, stats: Arc<ResolverStats>) -> Self {
        Self { config, zones: ZoneTracker::new(roots), emitter, stats }
    }

    fn zone_of_query(&self, server: IpAddr, query: &[u8]) -> Option<Name> {
        let msg = Message::from_bytes(query).ok()?;
        let q = msg.queries.first()?;
        self.zones.zone_for(server, q.name(), q.query_type())
    }

    fn frame(
        &self,
        t: Transport,
        local: SocketAddr,
        server: SocketAddr,
        sent: &Sent,
        query: Option<&[u8]>,
        response: Option<(&[u8], SystemTime)>,
    ) -> Bytes {
        let event = DnstapEvent {
            identity: self.config.identity.clone(),
            version: self.config.version.clone(),
            message: DnstapMessage {
                kind: if response.is_some() { MessageType::ResolverResponse } else { MessageType::ResolverQuery },
                socket_family: Some(if server.is_ipv4() { SocketFamily::Inet } else { SocketFamily::Inet6 }),
                socket_protocol: Some(match t {
                    Transport::Udp => SocketProtocol::Udp,
                    Transport::Tcp => SocketProtocol::Tcp,
                }),
                query_address: Some(local.ip()),
                response_address: Some(server.ip()),
                query_port: Some(local.port()),
                response_port: Some(server.port()),
                query_time: Some(timestamp(sent.time)),
                response_time: response.map(|(_, t)| timestamp(t)),
                query_zone: sent.zone.clone(),
                query_message: query.map(Bytes::copy_from_slice),
                response_message: response.map(|(r, _)| Bytes::copy_from_slice(r)),
            },
        };
        Bytes::from(encode(&event))
    }

    /// A query left for `server`: remembers its zone and time, emits RESOLVER_QUERY.
    fn on_query(&self, t: Transport, local: SocketAddr, server: SocketAddr, query: &[u8]) -> Sent {
        self.stats.upstream_queries(t == Transport::Tcp).inc();
        super::count_upstream_on_this_task();
        if !self.emitter.is_active() {
            // dnstap off: no zones to track, no frames to build.
            return Sent {
                zone: None,
                time: SystemTime::now(),
                question: question(query).unwrap_or_default().to_vec(),
            };
        }
        let sent = Sent {
            zone: self.zone_of_query(server.ip(), query),
            time: SystemTime::now(),
            question: question(query).unwrap_or_default().to_vec(),
        };
        if self.config.queries {
            self.emitter.emit(self.frame(t, local, server, &sent, Some(query), None));
        }
        sent
    }

    /// Its response arrived: learns delegations from it, emits RESOLVER_RESPONSE (without the
    /// query message, like unbound and BIND: the response repeats the question).
    fn on_response(&self, t: Transport, local: SocketAddr, server: SocketAddr, sent: &Sent, response: &[u8]) {
        self.stats.upstream_responses.inc();
        if !self.emitter.is_active() {
            return;
        }
        if let Some(zone) = &sent.zone
            && let Ok(msg) = Message::from_bytes(response)
        {
            self.zones.learn(zone, &msg);
        }
        self.emitter.emit(self.frame(t, local, server, sent, None, Some((response, SystemTime::now()))));
    }

    fn source_for(&self, server: SocketAddr) -> Option<IpAddr> {
        if server.is_ipv4() { self.config.source_v4 } else { self.config.source_v6 }
    }
}

/// Remembers a sent query; bounded.
fn remember<K: std::hash::Hash + Eq>(pending: &mut HashMap<K, Sent>, key: K, sent: Sent) {
    if pending.len() >= MAX_PENDING {
        pending.clear();
    }
    pending.insert(key, sent);
}

/// hickory's Tokio provider with every socket tapped.
#[derive(Clone)]
pub(crate) struct TapProvider {
    inner: TokioRuntimeProvider,
    tap: Arc<Tap>,
}

impl TapProvider {
    pub(crate) fn new(tap: Arc<Tap>) -> Self {
        Self { inner: TokioRuntimeProvider::new(), tap }
    }
}

impl RuntimeProvider for TapProvider {
    type Handle = TokioHandle;
    type Timer = TokioTime;
    type Udp = TapUdpSocket;
    type Tcp = TapTcpStream;

    fn create_handle(&self) -> Self::Handle {
        self.inner.create_handle()
    }

    fn connect_tcp(
        &self,
        server: SocketAddr,
        bind_addr: Option<SocketAddr>,
        timeout: Option<Duration>,
    ) -> Pin<Box<dyn Send + Future<Output = Result<Self::Tcp, io::Error>>>> {
        let bind_addr = bind_addr.or_else(|| self.tap.source_for(server).map(|ip| SocketAddr::new(ip, 0)));
        let connecting = self.inner.connect_tcp(server, bind_addr, timeout);
        let tap = self.tap.clone();
        Box::pin(async move {
            let stream = connecting.await?;
            let local = stream.0.local_addr()?;
            Ok(TapTcpStream {
                inner: stream,
                local,
                server,
                tap,
                written: Vec::new(),
                read: Vec::new(),
                pending: HashMap::new(),
            })
        })
    }

    fn bind_udp(
        &self,
        local: SocketAddr,
        server: SocketAddr,
    ) -> Pin<Box<dyn Send + Future<Output = Result<Self::Udp, io::Error>>>> {
        // hickory picks a random port (RFC 6056); keep it, only the address changes.
        let local = match self.tap.source_for(server) {
            Some(ip) => SocketAddr::new(ip, local.port()),
            None => local,
        };
        let binding = self.inner.bind_udp(local, server);
        let tap = self.tap.clone();
        Box::pin(async move {
            let inner = binding.await?;
            let local = inner.local_addr()?;
            Ok(TapUdpSocket { inner, local, tap, pending: Mutex::new(HashMap::new()) })
        })
    }
}

/// hickory opens a socket per UDP attempt, so retransmissions are new sockets (new ports),
/// each tapped on its own.
pub(crate) struct TapUdpSocket {
    inner: tokio::net::UdpSocket,
    local: SocketAddr,
    tap: Arc<Tap>,
    /// (server, DNS id) -> the query.
    pending: Mutex<HashMap<(SocketAddr, u16), Sent>>,
}

impl DnsUdpSocket for TapUdpSocket {
    type Time = TokioTime;

    fn poll_recv_from(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<(usize, SocketAddr)>> {
        let (len, from) = ready!(DnsUdpSocket::poll_recv_from(&self.inner, cx, buf))?;
        // Only a datagram from the server asked, with the id and the question asked (0x20
        // case aside), is its response (the recursor's own screens); anything else is not
        // reported, and the query stays pending for the real response.
        let got = &buf[..len];
        let sent = msg_id(got).and_then(|id| {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let matches = pending
                .get(&(from, id))
                .is_some_and(|s| question(got).is_some_and(|q| q.eq_ignore_ascii_case(&s.question)));
            if matches { pending.remove(&(from, id)) } else { None }
        });
        match sent {
            Some(sent) => self.tap.on_response(Transport::Udp, self.local, from, &sent, &buf[..len]),
            None => self.tap.stats.upstream_unmatched.inc(),
        }
        Poll::Ready(Ok((len, from)))
    }

    fn poll_send_to(&self, cx: &mut Context<'_>, buf: &[u8], target: SocketAddr) -> Poll<io::Result<usize>> {
        let n = ready!(DnsUdpSocket::poll_send_to(&self.inner, cx, buf, target))?;
        let sent = self.tap.on_query(Transport::Udp, self.local, target, &buf[..n]);
        if let Some(id) = msg_id(buf) {
            remember(&mut self.pending.lock().unwrap_or_else(|e| e.into_inner()), (target, id), sent);
        }
        Poll::Ready(Ok(n))
    }
}

/// DNS over TCP: two-byte length prefixes, several queries multiplexed by id. Both directions
/// are de-framed as they pass; buffers hold at most one partial message each (< 64 KiB).
pub(crate) struct TapTcpStream {
    inner: AsyncIoTokioAsStd<tokio::net::TcpStream>,
    local: SocketAddr,
    server: SocketAddr,
    tap: Arc<Tap>,
    written: Vec<u8>,
    read: Vec<u8>,
    pending: HashMap<u16, Sent>,
}

/// Takes one complete length-prefixed message off the front of `buf`.
fn next_message(buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let len = u16::from_be_bytes(*buf.first_chunk::<2>()?) as usize;
    if buf.len() < 2 + len {
        return None;
    }
    let message = buf[2..2 + len].to_vec();
    buf.drain(..2 + len);
    Some(message)
}

impl AsyncWrite for TapTcpStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.written.extend_from_slice(&buf[..n]);
        while let Some(query) = next_message(&mut this.written) {
            let sent = this.tap.on_query(Transport::Tcp, this.local, this.server, &query);
            if let Some(id) = msg_id(&query) {
                remember(&mut this.pending, id, sent);
            }
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

impl AsyncRead for TapTcpStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let n = ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        this.read.extend_from_slice(&buf[..n]);
        while let Some(response) = next_message(&mut this.read) {
            match msg_id(&response).and_then(|id| this.pending.remove(&id)) {
                Some(sent) => this.tap.on_response(Transport::Tcp, this.local, this.server, &sent, &response),
                None => this.tap.stats.upstream_unmatched.inc(),
            }
        }
        Poll::Ready(Ok(n))
    }
}

impl DnsTcpStream for TapTcpStream {
    type Time = TokioTime;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_question_section_is_found_or_refused() {
        let mut q = vec![0u8; 12];
        q.extend_from_slice(&[3, b'W', b'w', b'W', 0, 0, 1, 0, 1, 0xff]);
        assert_eq!(question(&q), Some(&q[12..21]));
        let mut r = q.clone();
        r[13] = b'w';
        assert!(question(&r).unwrap().eq_ignore_ascii_case(question(&q).unwrap()));
        assert_eq!(question(&q[..15]), None, "truncated");
        let mut compressed = vec![0u8; 12];
        compressed.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert_eq!(question(&compressed), None);
    }

    #[test]
    fn tcp_messages_are_split_at_their_length_prefixes() {
        let mut buf = vec![0, 3, b'a', b'b', b'c', 0, 2, b'x'];
        assert_eq!(next_message(&mut buf), Some(b"abc".to_vec()));
        assert_eq!(next_message(&mut buf), None, "second message incomplete");
        buf.push(b'y');
        assert_eq!(next_message(&mut buf), Some(b"xy".to_vec()));
        assert!(buf.is_empty());
    }
}
