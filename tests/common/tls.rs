//! Throwaway test PKI (rcgen): a CA and a leaf for `localhost` / 127.0.0.1, as PEM strings, files, a `MockTls` or a client.

use std::path::{Path, PathBuf};

use ai_proxy_mock::MockTls;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use super::client::Client;

/// A test CA and a leaf certificate (`localhost`, `127.0.0.1`) it signed. Every `TestCa::new()`
/// is a different, unrelated CA (use a second one for "wrong CA" tests).
pub struct TestCa {
    pub ca_pem: String,
    pub leaf_cert_pem: String,
    pub leaf_key_pem: String,
    ca_cert: Certificate,
    ca_key: KeyPair,
}

/// Paths written by [`TestCa::write_to`].
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

impl TestCa {
    pub fn new() -> Self {
        Self::named("ai-proxy test CA")
    }

    /// A CA with this common name.
    pub fn named(cn: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().expect("CA key");
        let ca_cert = params.self_signed(&ca_key).expect("CA self-sign");
        let mut ca = TestCa {
            ca_pem: ca_cert.pem(),
            leaf_cert_pem: String::new(),
            leaf_key_pem: String::new(),
            ca_cert,
            ca_key,
        };
        let (cert, key) = ca.issue(&["localhost", "127.0.0.1"]);
        ca.leaf_cert_pem = cert;
        ca.leaf_key_pem = key;
        ca
    }

    /// Issue a server leaf for these DNS names / IP addresses: (cert PEM, key PEM).
    pub fn issue(&self, names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, "ai-proxy test server");
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.ca_cert, &self.ca_key)
            .expect("leaf signing");
        (cert.pem(), key.serialize_pem())
    }

    /// The leaf (`localhost`, `127.0.0.1`) for a mock upstream.
    pub fn mock_tls(&self) -> MockTls {
        MockTls::from_pem(self.leaf_cert_pem.clone(), self.leaf_key_pem.clone())
    }

    /// Write `ca.pem`, `cert.pem` and `key.pem` (the leaf) into `dir`.
    pub fn write_to(&self, dir: &Path) -> TlsFiles {
        let files = TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        std::fs::write(&files.ca, &self.ca_pem).expect("write ca.pem");
        std::fs::write(&files.cert, &self.leaf_cert_pem).expect("write cert.pem");
        std::fs::write(&files.key, &self.leaf_key_pem).expect("write key.pem");
        files
    }

    /// A test client trusting only this CA.
    pub fn client(&self) -> Client {
        Client::with_ca_pem(self.ca_pem.as_bytes())
    }
}
