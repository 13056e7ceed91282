//! TLS configuration from PEM files (rustls with the ring provider), shared by the dnstap
//! listener (unbound can send dnstap over TLS) and the forwarding link (mutual TLS).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("{path}: cannot read PEM: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("{path}: no certificate found")]
    NoCertificate { path: PathBuf },
    #[error("TLS configuration rejected: {0}")]
    Config(#[from] rustls::Error),
    #[error("client CA {path}: {reason}")]
    ClientCa { path: PathBuf, reason: String },
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError::Pem { path: path.into(), reason: e.to_string() })?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem { path: path.into(), reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.into() });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Pem { path: path.into(), reason: e.to_string() })
}

/// A TLS server configuration; with `client_ca`, clients must present a certificate it signed.
pub fn server_config(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    Ok(Arc::new(server(cert, key, client_ca)?))
}

/// The server configuration for a dnstap (Frame Streams) listener: as [`server_config`], but
/// sending no TLS 1.3 session tickets. Unbound's dnstap thread drains input it does not
/// expect with a plain `recv()` on the socket, under TLS too: a ticket that arrives before its
/// READY frame is gone is swallowed raw, the next record fails to decrypt and unbound drops the
/// connection with "bad record mac". Without tickets the server is silent until it has a READY
/// to answer. A dnstap connection lives for hours; resumption would save nothing.
pub fn dnstap_server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = server(cert, key, client_ca)?;
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

fn server(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<rustls::ServerConfig, TlsError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in load_certs(ca)? {
                roots.add(c).map_err(|e| TlsError::ClientCa { path: ca.into(), reason: e.to_string() })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| TlsError::ClientCa { path: ca.into(), reason: e.to_string() })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    Ok(builder.with_single_cert(load_certs(cert)?, load_key(key)?)?)
}

/// A client configuration builder that trusts only `ca`.
fn client_trusting(
    ca: &Path,
) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(ca)? {
        roots.add(c).map_err(|e| TlsError::ClientCa { path: ca.into(), reason: e.to_string() })?;
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots))
}

/// A TLS client configuration that trusts only `ca`, without a client certificate.
pub fn client_config_anonymous(ca: &Path) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    Ok(Arc::new(client_trusting(ca)?.with_no_client_auth()))
}

/// A TLS client configuration that trusts only `ca` and authenticates with (`cert`, `key`).
pub fn client_config(ca: &Path, cert: &Path, key: &Path) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    Ok(Arc::new(client_trusting(ca)?.with_client_auth_cert(load_certs(cert)?, load_key(key)?)?))
}
