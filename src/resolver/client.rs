//! CLIENT_QUERY / CLIENT_RESPONSE dnstap, opt-in (`dnstap.client_messages`): they carry the
//! client's address, port and question, which is personal data, so they are off by default
//! (the sensor drops them on arrival either way). The query is the request's bytes as
//! received; the response is encoded here exactly as hickory-server would encode it (same size
//! limit, same truncation) and handed on to hickory-server rebuilt from those bytes, so what
//! dnstap records is what the client gets.

use std::iter;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use hickory_proto::op::Message;
use hickory_proto::rr::Record;
use hickory_proto::serialize::binary::BinDecoder;
use hickory_resolver::net::NetError;
use hickory_resolver::net::xfer::Protocol;
use hickory_server::server::{ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder, Queries};

use super::emit::Emitter;
use super::tap::timestamp;
use crate::dnstap::{DnstapEvent, DnstapMessage, MessageType, SocketFamily, SocketProtocol, encode};

/// Builds and emits client frames.
pub(crate) struct ClientTap {
    pub identity: Option<Bytes>,
    pub version: Option<Bytes>,
    pub emitter: Emitter,
}

impl ClientTap {
    fn emit(
        &self,
        kind: MessageType,
        client: SocketAddr,
        protocol: Protocol,
        query: Option<(&[u8], SystemTime)>,
        response: Option<&[u8]>,
        query_time: SystemTime,
    ) {
        let event = DnstapEvent {
            identity: self.identity.clone(),
            version: self.version.clone(),
            message: DnstapMessage {
                kind,
                socket_family: Some(if client.is_ipv4() { SocketFamily::Inet } else { SocketFamily::Inet6 }),
                socket_protocol: Some(if protocol == Protocol::Tcp {
                    SocketProtocol::Tcp
                } else {
                    SocketProtocol::Udp
                }),
                query_address: Some(client.ip()),
                response_address: None,
                query_port: Some(client.port()),
                response_port: None,
                query_time: Some(timestamp(query_time)),
                response_time: response.map(|_| timestamp(SystemTime::now())),
                query_zone: None,
                query_message: query.map(|(q, _)| Bytes::copy_from_slice(q)),
                response_message: response.map(Bytes::copy_from_slice),
            },
        };
        self.emitter.emit(Bytes::from(encode(&event)));
    }

    pub(crate) fn query(&self, client: SocketAddr, protocol: Protocol, wire: &[u8], at: SystemTime) {
        self.emit(MessageType::ClientQuery, client, protocol, Some((wire, at)), None, at);
    }
}

/// A response handler that records the response as CLIENT_RESPONSE on its way out.
#[derive(Clone)]
pub(crate) struct Recording<R> {
    pub inner: R,
    pub tap: Arc<ClientTap>,
    pub client: SocketAddr,
    pub protocol: Protocol,
    pub query_time: SystemTime,
}

#[async_trait::async_trait]
impl<R: ResponseHandler> ResponseHandler for Recording<R> {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let (_, wire) = super::udp::encode(response, self.protocol)?;
        self.tap.emit(MessageType::ClientResponse, self.client, self.protocol, None, Some(&wire), self.query_time);

        let message = Message::from_vec(&wire)?;
        let mut decoder = BinDecoder::new(&wire);
        decoder.read_slice(12).map_err(|e| NetError::from(e.to_string()))?;
        let queries = Queries::read(&mut decoder, message.queries.len()).map_err(|e| NetError::from(e.to_string()))?;
        let rebuilt = MessageResponseBuilder::new(&queries, message.edns.as_ref()).build(
            message.metadata,
            message.answers.iter(),
            message.authorities.iter(),
            iter::empty::<&Record>(),
            message.additionals.iter(),
        );
        self.inner.send_response(rebuilt).await
    }
}
