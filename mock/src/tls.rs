//! TLS material for the mock upstream and the rustls acceptor built from it (ALPN http/1.1).

use std::io;
use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// A PEM certificate chain (leaf first) and its PEM private key.
#[derive(Clone, Debug)]
pub struct MockTls {
    pub cert_chain_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl MockTls {
    pub fn from_pem(cert_chain_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        MockTls {
            cert_chain_pem: cert_chain_pem.into(),
            key_pem: key_pem.into(),
        }
    }

    /// Read the chain and key from PEM files.
    pub fn from_files(cert_chain: impl AsRef<Path>, key: impl AsRef<Path>) -> io::Result<Self> {
        Ok(MockTls {
            cert_chain_pem: std::fs::read(cert_chain)?,
            key_pem: std::fs::read(key)?,
        })
    }

    pub(crate) fn acceptor(&self) -> io::Result<TlsAcceptor> {
        let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
        let certs: Vec<CertificateDer<'static>> =
            rustls_pemfile::certs(&mut self.cert_chain_pem.as_slice()).collect::<Result<_, _>>()?;
        if certs.is_empty() {
            return Err(invalid("mock TLS: no certificate in the PEM chain".into()));
        }
        let key: PrivateKeyDer<'static> =
            rustls_pemfile::private_key(&mut self.key_pem.as_slice())?
                .ok_or_else(|| invalid("mock TLS: no private key in the key PEM".into()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(format!("mock TLS: {e}")))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| invalid(format!("mock TLS: {e}")))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}
