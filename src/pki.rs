//! `dnsledger pki`: a private CA and the certificates forwarding needs (rcgen, ECDSA P-256),
//! one command per host:
//!
//! ```text
//! dnsledger pki ca --dir pki                       # pki/ca.pem, pki/ca.key
//! dnsledger pki server --dir pki collector.example.net --ip 192.0.2.10
//! dnsledger pki client --dir pki sensor-fra-1      # CN = the sensor id
//! ```
//! Keys are written with mode 0600 and never overwritten. Issuing reloads the CA from its key
//! and certificate (the subject is read back from `ca.pem`), so the CA can live on an offline
//! machine with nothing but these two files.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use thiserror::Error;

use crate::forward::identity::{common_name, valid_id};

#[derive(Debug, Error)]
pub enum PkiError {
    #[error("{0}: exists already (not overwritten)")]
    Exists(PathBuf),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{0}: not a CA made by `dnsledger pki ca` (no readable certificate or subject CN)")]
    NotOurCa(PathBuf),
    #[error("`{0}`: an id is 1-64 of A-Z a-z 0-9 . _ -")]
    BadId(String),
    #[error("`{0}`: not a DNS name")]
    BadName(String),
}

const CA_DAYS: i64 = 3650;

fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), PkiError> {
    let io = |source| PkiError::Io { path: path.to_path_buf(), source };
    let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists { PkiError::Exists(path.to_path_buf()) } else { io(e) }
    })?;
    f.write_all(text.as_bytes()).map_err(io)
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    // An hour of slack for peers whose clocks run behind.
    params.not_before = now - time::Duration::hours(1);
    // 0 days: expired a minute ago (a certificate for testing that expired ones are refused).
    params.not_after = if days == 0 { now - time::Duration::minutes(1) } else { now + time::Duration::days(days) };
}

fn ca_params(name: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    p
}

/// Creates `dir/ca.pem` and `dir/ca.key`.
pub fn create_ca(dir: &Path, name: &str) -> Result<(), PkiError> {
    std::fs::create_dir_all(dir).map_err(|source| PkiError::Io { path: dir.into(), source })?;
    let key = KeyPair::generate()?;
    let mut params = ca_params(name);
    validity(&mut params, CA_DAYS);
    let cert = params.self_signed(&key)?;
    write_new(&dir.join("ca.key"), &key.serialize_pem(), 0o600)?;
    write_new(&dir.join("ca.pem"), &cert.pem(), 0o644)
}

/// The CA as an issuer: its key, and a certificate with its subject and key (re-made from
/// them: signatures only depend on those).
fn load_ca(dir: &Path) -> Result<(Certificate, KeyPair), PkiError> {
    let (pem, key) = (dir.join("ca.pem"), dir.join("ca.key"));
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|source| PkiError::Io { path: p.into(), source });
    let key = KeyPair::from_pem(&read(&key)?)?;
    let der = CertificateDer::from_pem_slice(read(&pem)?.as_bytes()).map_err(|_| PkiError::NotOurCa(pem.clone()))?;
    let name = common_name(&der).ok_or(PkiError::NotOurCa(pem))?;
    Ok((ca_params(&name).self_signed(&key)?, key))
}

fn issue(dir: &Path, file: &str, mut params: CertificateParams, days: i64) -> Result<PathBuf, PkiError> {
    let (ca, ca_key) = load_ca(dir)?;
    validity(&mut params, days);
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca, &ca_key)?;
    let pem = dir.join(format!("{file}.pem"));
    write_new(&dir.join(format!("{file}.key")), &key.serialize_pem(), 0o600)?;
    write_new(&pem, &cert.pem(), 0o644)?;
    Ok(pem)
}

/// A server certificate for `name` (and `ips`): `dir/NAME.pem`, `dir/NAME.key`.
pub fn issue_server(dir: &Path, name: &str, ips: &[IpAddr], days: i64) -> Result<PathBuf, PkiError> {
    if hickory_proto::rr::Name::from_ascii(name).is_err() || name.is_empty() || name.contains('/') {
        return Err(PkiError::BadName(name.into()));
    }
    let mut params = CertificateParams::new(vec![name.to_string()])?;
    params.subject_alt_names.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    issue(dir, name, params, days)
}

/// A client certificate whose CN is `id` (the sensor or relay id upstream).
pub fn issue_client(dir: &Path, id: &str, days: i64) -> Result<PathBuf, PkiError> {
    if !valid_id(id) {
        return Err(PkiError::BadId(id.into()));
    }
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, id);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    issue(dir, id, params, days)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_issues_certificates_that_name_their_holder() {
        let dir = tempfile::tempdir().unwrap();
        create_ca(dir.path(), "test CA").unwrap();
        assert!(matches!(create_ca(dir.path(), "again"), Err(PkiError::Exists(_))), "never overwrites");
        let pem = issue_client(dir.path(), "sensor-1", 30).unwrap();
        let der = CertificateDer::from_pem_file(&pem).unwrap();
        assert_eq!(common_name(&der).as_deref(), Some("sensor-1"));
        issue_server(dir.path(), "collector.example", &["127.0.0.1".parse().unwrap()], 30).unwrap();
        assert!(matches!(issue_client(dir.path(), "bad id", 30), Err(PkiError::BadId(_))));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("sensor-1.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // rustls accepts the pair as a client identity under that CA.
        let ca = dir.path().join("ca.pem");
        crate::tls::client_config(&ca, &pem, &dir.path().join("sensor-1.key")).unwrap();
        crate::tls::server_config(
            &dir.path().join("collector.example.pem"),
            &dir.path().join("collector.example.key"),
            Some(&ca),
        )
        .unwrap();
    }
}
