//! TLS for clients (rustls on the `ring` provider), for a node started with `--tls-cert`:
//! the node's certificate is checked against a CA file, and a client certificate is offered
//! when the node asks for one (`--tls-ca` on the node).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConnection, RootCertStore, StreamOwned};

/// How to reach nodes over TLS: whom to trust, and what to show.
#[derive(Clone)]
pub struct TlsClient {
    config: Arc<rustls::ClientConfig>,
    /// The name the node's certificate must carry; `None`: the node's IP address.
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl TlsClient {
    /// Trusts the CA certificates of `ca` (PEM); offers the certificate and key of
    /// `identity` (PEM files) when given; checks the node's certificate for `server_name`, or
    /// for the node's IP address when `None`.
    ///
    /// # Errors
    /// A file that cannot be read or parsed, or a name that is not a valid server name; the
    /// message names the file.
    pub fn from_files(
        ca: &Path,
        identity: Option<(&Path, &Path)>,
        server_name: Option<&str>,
    ) -> Result<TlsClient, String> {
        let at = |p: &Path, e: &dyn std::fmt::Display| format!("{}: {e}", p.display());
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).map_err(|e| at(ca, &e))? {
            roots.add(cert.map_err(|e| at(ca, &e))?).map_err(|e| at(ca, &e))?;
        }
        if roots.is_empty() {
            return Err(at(ca, &"no CA certificate in the file"));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        let config = match identity {
            Some((cert, key)) => {
                let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                    .map_err(|e| at(cert, &e))?
                    .collect::<Result<_, _>>()
                    .map_err(|e| at(cert, &e))?;
                let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| at(key, &e))?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|e| at(key, &e))?
            }
            None => builder.with_no_client_auth(),
        };
        let server_name = server_name
            .map(|n| ServerName::try_from(n.to_string()).map_err(|e| format!("server name {n:?}: {e}")))
            .transpose()?;
        Ok(TlsClient {
            config: Arc::new(config),
            server_name,
        })
    }

    /// Wraps a connected stream to `addr`; the handshake runs with the first read or write.
    pub(crate) fn wrap(&self, addr: SocketAddr, stream: TcpStream) -> io::Result<Stream> {
        let name = self
            .server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        let conn = ClientConnection::new(Arc::clone(&self.config), name).map_err(io::Error::other)?;
        Ok(Stream::Tls(Box::new(StreamOwned::new(conn, stream))))
    }
}

/// A connection's byte stream: plain TCP, or TLS over it.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Stream {
    /// The TCP socket underneath (timeouts, shutdown).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &s.sock,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}
