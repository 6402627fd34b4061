//! The TLS material of a process, read once from the files `TlsFiles` names.

use std::path::Path;
use std::sync::Arc;

use crate::TlsFiles;

/// Why the TLS files could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A file holds no PEM block of the kind it must hold.
    #[error("{path} holds no PEM {what}")]
    NotPem {
        /// The file.
        path: String,
        /// What it should hold.
        what: &'static str,
    },
    /// A client certificate without its key, or a key without its certificate.
    #[error("a client certificate needs both DTEE_TLS_CERT_FILE and DTEE_TLS_KEY_FILE")]
    HalfIdentity,
}

/// PEM bytes for TLS connections: extra trusted CAs and an optional client identity. Cheap to
/// clone. The default trusts the system's CA store only and presents no client certificate.
#[derive(Clone, Default)]
pub struct Tls {
    inner: Arc<TlsInner>,
}

#[derive(Default)]
struct TlsInner {
    ca_pem: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("ca", &self.inner.ca_pem.is_some())
            .field("client_certificate", &self.inner.identity.is_some())
            .finish()
    }
}

fn read(path: &Path, what: &'static str, marker: &str) -> Result<Vec<u8>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })?;
    if !String::from_utf8_lossy(&bytes).contains(marker) {
        return Err(TlsError::NotPem {
            path: path.display().to_string(),
            what,
        });
    }
    Ok(bytes)
}

impl Tls {
    /// Reads the files `files` names (none: the system's CA store only).
    pub fn load(files: &TlsFiles) -> Result<Tls, TlsError> {
        install_provider();
        let ca_pem = match &files.tls_ca_file {
            Some(path) => Some(read(path, "certificate", "-----BEGIN CERTIFICATE-----")?),
            None => None,
        };
        let identity = match (&files.tls_cert_file, &files.tls_key_file) {
            (Some(cert), Some(key)) => Some((
                read(cert, "certificate", "-----BEGIN CERTIFICATE-----")?,
                read(key, "private key", "PRIVATE KEY-----")?,
            )),
            (None, None) => None,
            _ => return Err(TlsError::HalfIdentity),
        };
        Ok(Tls {
            inner: Arc::new(TlsInner { ca_pem, identity }),
        })
    }

    /// The extra CA certificates (PEM), if any.
    pub fn ca_pem(&self) -> Option<&[u8]> {
        self.inner.ca_pem.as_deref()
    }

    /// The client certificate and key (PEM), if any.
    pub fn identity(&self) -> Option<(&[u8], &[u8])> {
        self.inner
            .identity
            .as_ref()
            .map(|(cert, key)| (cert.as_slice(), key.as_slice()))
    }

    /// The same material for lapin.
    pub(crate) fn for_lapin(&self) -> lapin::tcp::OwnedTLSConfig {
        lapin::tcp::OwnedTLSConfig {
            identity: self
                .identity()
                .map(|(pem, key)| lapin::tcp::OwnedIdentity::PKCS8 {
                    pem: pem.to_vec(),
                    key: key.to_vec(),
                }),
            cert_chain: self
                .ca_pem()
                .map(|pem| String::from_utf8_lossy(pem).into_owned()),
        }
    }

    /// The same material for redis.
    pub(crate) fn for_redis(&self) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: self.identity().map(|(cert, key)| redis::ClientTlsConfig {
                client_cert: cert.to_vec(),
                client_key: key.to_vec(),
            }),
            root_cert: self.ca_pem().map(<[u8]>::to_vec),
        }
    }
}

/// Makes ring the process's rustls provider (once; later calls do nothing), so that no build
/// depends on which providers other crates happened to enable. (rustls deprecates ring's
/// provider for lacking post-quantum key exchange; aws-lc-rs, which has it, is kept out of the
/// tree on purpose: it needs cmake and a long C build on these 2-core machines.)
#[allow(deprecated)]
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
