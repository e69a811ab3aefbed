//! TLS for clients, with rustls (on the `ring` provider): the RESP port speaks only TLS, and
//! on the binary port a connection whose first byte opens a TLS record (0x16, a handshake) is
//! a TLS client, as Redis does with `--tls-port` (redis.io/docs/latest/operate/oss_and_stack/management/security/encryption).
//! Peers do not use TLS: their connections are sealed by the keyring ([`crate::secure`]).
//!
//! `--tls-cert FILE` (PEM, the chain, leaf first) and `--tls-key FILE` (PEM, PKCS#8, PKCS#1 or
//! SEC1) make the node's identity; `--tls-ca FILE` (PEM) makes it ask every client for a
//! certificate signed by that CA (Redis' `tls-auth-clients yes`).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

/// The first byte of a TLS record that carries a handshake (a ClientHello starts one).
pub const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The server side of TLS, from PEM files.
///
/// # Errors
/// [`crate::Error::Tls`] naming the file that cannot be read or parsed, or what rustls
/// refuses (a key that does not match the certificate, no certificate in the file).
pub fn server_config(cert: &Path, key: &Path, ca: Option<&Path>) -> crate::Result<Arc<rustls::ServerConfig>> {
    let error = |what: &Path, reason: String| crate::Error::Tls(format!("{}: {reason}", what.display()));
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| error(cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| error(cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(error(cert, "no certificate in the file".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| error(key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| crate::Error::Tls(e.to_string()))?;
    let builder = match ca {
        Some(ca) => {
            let roots = root_store(ca)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| error(ca, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(certs, key_der)
        .map_err(|e| error(key, format!("does not go with the certificate: {e}")))?;
    Ok(Arc::new(config))
}

/// The CA certificates of a PEM file.
fn root_store(ca: &Path) -> crate::Result<RootCertStore> {
    let error = |reason: String| crate::Error::Tls(format!("{}: {reason}", ca.display()));
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| error(e.to_string()))? {
        roots
            .add(cert.map_err(|e| error(e.to_string()))?)
            .map_err(|e| error(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(error("no CA certificate in the file".into()));
    }
    Ok(roots)
}
