//! TLS on every hop, with rustls (the `ring` provider):
//!
//! - [`ServerTls`]: a server's certificate and key (`--tls-cert`,
//!   `--tls-key`) and, for mutual TLS, the CA its clients' certificates
//!   must come from (`--tls-client-ca`). Handshakes run in fanout's own
//!   acceptor (see [`crate::serve`]) over the configuration in force when
//!   the connection came, so that [`ServerTls::reload`] (on SIGHUP) rotates
//!   the certificate without a restart: connections already open, and the
//!   calls on them, go on with the old one.
//! - [`ClientTls`]: what a client trusts (`--tls-ca`) and, for mutual TLS,
//!   the certificate it presents (the same `--tls-cert`/`--tls-key`), as a
//!   tonic `ClientTlsConfig` per endpoint, checking the server's name
//!   against the host the address names (a DNS name or an IP address), or
//!   the `dns:` name a replica was discovered by.
//!
//! A private key file that every user may read is refused.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// Why TLS files cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {}: {reason}", .path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "the private key {} can be read by every user (mode {mode:o}): make it readable by its owner only (chmod 600)",
        .path.display()
    )]
    WorldReadableKey { path: PathBuf, mode: u32 },
    #[error("{what} {} holds no certificate", .path.display())]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("unusable TLS configuration: {0}")]
    Config(String),
}

/// The files of a server's TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Clients must present a certificate from this CA (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

/// A server's TLS configuration, reloadable.
#[derive(Debug)]
pub struct ServerTls {
    files: ServerTlsFiles,
    config: RwLock<Arc<ServerConfig>>,
}

impl ServerTls {
    pub fn load(files: ServerTlsFiles) -> Result<ServerTls, TlsError> {
        let config = server_config(&files)?;
        Ok(ServerTls {
            files,
            config: RwLock::new(Arc::new(config)),
        })
    }

    pub fn files(&self) -> &ServerTlsFiles {
        &self.files
    }

    /// Reads the files again; new connections get the new certificate,
    /// open ones keep theirs. On failure the configuration in force stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = server_config(&self.files)?;
        *self
            .config
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(config);
        Ok(())
    }

    /// An acceptor over the configuration in force now.
    pub fn acceptor(&self) -> TlsAcceptor {
        let config = self
            .config
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        TlsAcceptor::from(Arc::clone(&config))
    }

    /// Whether clients must present a certificate.
    pub fn is_mutual(&self) -> bool {
        self.files.client_ca.is_some()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_config(files: &ServerTlsFiles) -> Result<ServerConfig, TlsError> {
    let certs = read_certificates("the certificate", &files.cert)?;
    let key = read_key(&files.key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| TlsError::Config(error.to_string()))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let roots = root_store("the client CA", ca)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|error| TlsError::Config(error.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|error| TlsError::Config(format!("the certificate and key: {error}")))?;
    // gRPC is HTTP/2.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

fn read_certificates(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read = |reason: String| TlsError::Read {
        what,
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|error| read(error.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| read(error.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn root_store(what: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certificates(what, path)? {
        roots
            .add(cert)
            .map_err(|error| TlsError::Config(format!("{what} {}: {error}", path.display())))?;
    }
    Ok(roots)
}

/// Refuses a key file that every user may read.
fn check_key_permissions(path: &Path) -> Result<(), TlsError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let metadata = std::fs::metadata(path).map_err(|error| TlsError::Read {
            what: "the private key",
            path: path.to_owned(),
            reason: error.to_string(),
        })?;
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o007 != 0 {
            return Err(TlsError::WorldReadableKey {
                path: path.to_owned(),
                mode,
            });
        }
    }
    Ok(())
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    check_key_permissions(path)?;
    PrivateKeyDer::from_pem_file(path).map_err(|error| TlsError::Read {
        what: "the private key",
        path: path.to_owned(),
        reason: error.to_string(),
    })
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read {
        what,
        path: path.to_owned(),
        reason: error.to_string(),
    })
}

/// What a client of fanout's servers trusts and presents.
#[derive(Clone)]
pub struct ClientTls {
    ca: Certificate,
    identity: Option<Identity>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("mutual", &self.identity.is_some())
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Trusts the CA in `ca`; presents `cert` and `key` (mutual TLS) when
    /// both are given.
    pub fn load(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<ClientTls, TlsError> {
        // Checked as certificates, so a wrong file fails here, not at the
        // first call.
        read_certificates("the CA", ca)?;
        let ca = Certificate::from_pem(read_file("the CA", ca)?);
        let identity = match identity {
            None => None,
            Some((cert, key)) => {
                read_certificates("the certificate", cert)?;
                check_key_permissions(key)?;
                Some(Identity::from_pem(
                    read_file("the certificate", cert)?,
                    read_file("the private key", key)?,
                ))
            }
        };
        Ok(ClientTls { ca, identity })
    }

    /// The tonic configuration for a server named `server_name` (the host
    /// its certificate must name).
    pub fn config(&self, server_name: &str) -> ClientTlsConfig {
        let config = ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .domain_name(server_name.trim_start_matches('[').trim_end_matches(']'));
        match &self.identity {
            Some(identity) => config.identity(identity.clone()),
            None => config,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_every_user_may_read_is_refused_and_missing_files_say_which() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("fanout-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("key.pem");
        std::fs::write(&key, "not a key").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = read_key(&key).unwrap_err().to_string();
        assert!(error.contains("chmod 600"), "{error}");
        let files = ServerTlsFiles {
            cert: dir.join("missing.pem"),
            key,
            client_ca: None,
        };
        let error = ServerTls::load(files).unwrap_err().to_string();
        assert!(error.contains("cannot read the certificate"), "{error}");
        assert!(error.contains("missing.pem"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
