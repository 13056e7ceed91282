//! INSERTs that commit all of their rows or none.
//!
//! ClickHouse (18.16, verified) treats the end of a request body as the end of an INSERT's
//! input even when the client vanished mid-way: a collector killed while sending a batch
//! leaves the rows it had sent committed, as a block that is not the batch's block, so block
//! deduplication cannot drop the retry and the rows count twice. So every INSERT here sends
//! its rows (RowBinary) as a single block of ClickHouse's native compression format
//! (`decompress=1`): a 16-byte CityHash128 checksum, method byte, sizes, then zstd data. The
//! server reads the whole block and checks its size and checksum before parsing a row, so a
//! body cut anywhere is an error and commits nothing; an uncut one is the same rows as before,
//! the same block for deduplication.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

/// ClickHouse's method byte for a zstd-compressed block.
const ZSTD: u8 = 0x90;
/// Method byte, compressed size, uncompressed size.
const HEADER: usize = 9;
/// ClickHouse refuses compressed blocks past 1 GiB (a batch's `landing` rows, the largest
/// single block, stay below 200 MiB: 64 MiB of batch plus at most 100,000 keys and counters).
const MAX_BLOCK: usize = 1 << 30;
/// The start of an error answer that is kept for the error message.
const MAX_ERROR_TEXT: usize = 2048;
/// The most of an answer that is read (an INSERT's success answer is empty).
const MAX_ANSWER: usize = 1 << 20;

/// A row as ClickHouse's RowBinary format lays it out.
pub trait RowBinary {
    fn put(&self, out: &mut Vec<u8>);
}

/// An unsigned LEB128 length, as RowBinary prefixes strings and arrays.
pub(crate) fn put_len(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push(n as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// A `String` column (any bytes).
pub(crate) fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_len(out, b.len());
    out.extend_from_slice(b);
}

/// An `Array(String)` column.
pub(crate) fn put_strings<S: AsRef<[u8]>>(out: &mut Vec<u8>, items: &[S]) {
    put_len(out, items.len());
    for s in items {
        put_bytes(out, s.as_ref());
    }
}

impl<T: RowBinary> RowBinary for &T {
    fn put(&self, out: &mut Vec<u8>) {
        (*self).put(out)
    }
}

/// `rows` in RowBinary.
pub fn rows<R: RowBinary>(rows: impl IntoIterator<Item = R>) -> Vec<u8> {
    let mut out = Vec::new();
    for r in rows {
        r.put(&mut out);
    }
    out
}

/// `data` as one block of ClickHouse's native compression format.
pub fn block(data: &[u8]) -> Result<Vec<u8>, String> {
    let packed = zstd::block::compress(data, 1).map_err(|e| format!("zstd: {e}"))?;
    let size = HEADER + packed.len();
    if size > MAX_BLOCK || u32::try_from(data.len()).is_err() {
        return Err(format!(
            "an INSERT of {} bytes ({size} compressed) is past the format's limits (1 GiB compressed, 4 GiB not)",
            data.len()
        ));
    }
    let mut out = Vec::with_capacity(16 + size);
    out.extend_from_slice(&[0; 16]);
    out.push(ZSTD);
    out.extend_from_slice(&(size as u32).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&packed);
    // ClickHouse's checksum: CityHash128 v1.0.2 of the rest, low and high halves swapped.
    let sum = cityhash_rs::cityhash_102_128(&out[16..]).rotate_right(64);
    out[..16].copy_from_slice(&sum.to_le_bytes());
    Ok(out)
}

enum Http {
    Plain(Client<HttpConnector, Full<Bytes>>),
    Tls(Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>),
}

/// Sends INSERTs to one shard over HTTP(S).
pub(crate) struct Inserter {
    http: Http,
    /// The shard's URL with the settings every INSERT carries as its query.
    base: String,
    user: String,
    password: String,
    timeout: Duration,
}

impl Inserter {
    /// `settings` go into every request's URL; `tls` is for `https://` URLs.
    pub(crate) fn new(
        url: &str,
        user: &str,
        password: &str,
        settings: &[(&str, String)],
        tls: Option<&rustls::ClientConfig>,
        timeout: Duration,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let builder = || {
            let mut b = Client::builder(hyper_util::rt::TokioExecutor::new());
            b.pool_idle_timeout(Duration::from_secs(2));
            b
        };
        let http = match tls {
            Some(tls) => {
                connector.enforce_http(false);
                let https = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(tls.clone())
                    .https_or_http()
                    .enable_http1()
                    .wrap_connector(connector);
                Http::Tls(builder().build(https))
            }
            None => Http::Plain(builder().build(connector)),
        };
        // The URL's path is kept (a shard behind a proxy path), its query is replaced, as the
        // clickhouse crate's queries do.
        let url = url.split(['?', '#']).next().unwrap_or_default();
        let has_path = url.split_once("://").is_some_and(|(_, rest)| rest.contains('/'));
        let mut base = format!("{url}{}?decompress=1", if has_path { "" } else { "/" });
        for (name, value) in settings {
            base.push_str(&format!("&{name}={}", utf8_percent_encode(value, NON_ALPHANUMERIC)));
        }
        Self { http, base, user: user.to_string(), password: password.to_string(), timeout }
    }

    /// One INSERT of `body` (from [`block`]) into `table`; `Err` says why it was refused.
    pub(crate) async fn insert(&self, table: &str, body: Vec<u8>) -> Result<(), String> {
        let sql = format!("INSERT INTO {table} FORMAT RowBinary");
        let uri = format!("{}&query={}", self.base, utf8_percent_encode(&sql, NON_ALPHANUMERIC));
        let request = hyper::Request::post(uri)
            .header("X-ClickHouse-User", &self.user)
            .header("X-ClickHouse-Key", &self.password)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("request: {e}"))?;
        let exchange = async {
            let response = match &self.http {
                Http::Plain(c) => c.request(request).await,
                Http::Tls(c) => c.request(request).await,
            }
            .map_err(|e| {
                format!("{e} ({})", std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default())
            })?;
            let status = response.status();
            let text = http_body_util::Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?;
            if status.is_success() {
                return Ok(());
            }
            let text = text.to_bytes();
            let text = String::from_utf8_lossy(&text[..text.len().min(MAX_ERROR_TEXT)]).trim().to_string();
            Err(format!("{status}: {text}"))
        };
        tokio::time::timeout(self.timeout, exchange).await.map_err(|_| format!("no answer in {:?}", self.timeout))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shard_url_keeps_its_path_and_loses_its_query() {
        let base = |url: &str| Inserter::new(url, "u", "p", &[("a", "b c".into())], None, Duration::from_secs(1)).base;
        assert_eq!(base("http://h:8123"), "http://h:8123/?decompress=1&a=b%20c");
        assert_eq!(base("http://h:8123/"), "http://h:8123/?decompress=1&a=b%20c");
        assert_eq!(base("https://h/ch?x=1"), "https://h/ch?decompress=1&a=b%20c");
    }

    #[test]
    fn lengths_are_leb128() {
        for (n, want) in [(0usize, vec![0u8]), (127, vec![0x7f]), (128, vec![0x80, 0x01]), (300, vec![0xac, 0x02])] {
            let mut out = Vec::new();
            put_len(&mut out, n);
            assert_eq!(out, want, "{n}");
        }
    }

    #[test]
    fn a_block_says_its_sizes_and_holds_the_data_zstd_compressed() {
        let data = b"rows rows rows rows rows".repeat(100);
        let b = block(&data).unwrap();
        assert_eq!(b[16], ZSTD);
        assert_eq!(u32::from_le_bytes(b[17..21].try_into().unwrap()) as usize, b.len() - 16);
        assert_eq!(u32::from_le_bytes(b[21..25].try_into().unwrap()) as usize, data.len());
        assert_eq!(zstd::block::decompress(&b[25..], data.len()).unwrap(), data);
    }
}
