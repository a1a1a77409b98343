//! Throwaway certificates for local clusters and tests (`fanout up --tls`,
//! the TLS tests): a CA made on the spot, and certificates it signs, written
//! as PEM files, keys readable by their owner only. Never for production:
//! nothing here is kept, rotated or revoked.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

/// A CA of its own.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// How long a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// From 1975 on (rcgen's default span).
    Current,
    /// Throughout 2020 only: expired.
    Expired,
}

/// A certificate and its key, as PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The files of one certificate.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Ca {
    /// A new CA named `name`.
    pub fn new(name: &str) -> anyhow::Result<Ca> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)
            .context("cannot make the CA")?;
        Ok(Ca { issuer })
    }

    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for `names` (DNS names or IP addresses), good for
    /// both server and client authentication.
    pub fn issue(&self, names: &[&str], validity: Validity) -> anyhow::Result<Issued> {
        let mut params = CertificateParams::new(
            names
                .iter()
                .map(|name| (*name).to_owned())
                .collect::<Vec<_>>(),
        )?;
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("fanout"),
        );
        if validity == Validity::Expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2020, 12, 31);
        }
        let key = KeyPair::generate()?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .context("cannot sign the certificate")?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes the CA's certificate to `path`.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, self.cert_pem())
            .with_context(|| format!("cannot write {}", path.display()))
    }
}

impl Issued {
    /// Writes `<dir>/<stem>.pem` and `<dir>/<stem>-key.pem` (mode 0600).
    pub fn write(&self, dir: &Path, stem: &str) -> anyhow::Result<CertFiles> {
        use std::os::unix::fs::PermissionsExt;
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}-key.pem"));
        std::fs::write(&cert, &self.cert_pem)
            .with_context(|| format!("cannot write {}", cert.display()))?;
        std::fs::write(&key, &self.key_pem)
            .with_context(|| format!("cannot write {}", key.display()))?;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
        Ok(CertFiles { cert, key })
    }
}

/// The TLS of a local cluster (`fanout up --tls`, a benchmark scenario with
/// `tls = true`): a CA made for the run and one certificate, for
/// `localhost` and `127.0.0.1`, that every process serves and presents.
pub struct LocalTls {
    /// The CA's certificate, the one file clients trust.
    pub ca: PathBuf,
    pub files: CertFiles,
}

impl LocalTls {
    /// Makes the CA and the certificate in `dir` (`ca.pem`, `fanout.pem`,
    /// `fanout-key.pem`).
    pub fn make(dir: &Path, ca_name: &str) -> anyhow::Result<LocalTls> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let ca = Ca::new(ca_name)?;
        let ca_path = dir.join("ca.pem");
        ca.write(&ca_path)?;
        let files = ca
            .issue(&["localhost", "127.0.0.1"], Validity::Current)?
            .write(dir, "fanout")?;
        Ok(LocalTls { ca: ca_path, files })
    }

    /// A server's flags; `mutual`: its clients need a certificate of the CA.
    pub fn server_args(&self, mutual: bool) -> Vec<std::ffi::OsString> {
        let mut args = vec![
            "--tls-cert".into(),
            self.files.cert.clone().into_os_string(),
            "--tls-key".into(),
            self.files.key.clone().into_os_string(),
        ];
        if mutual {
            args.push("--tls-client-ca".into());
            args.push(self.ca.clone().into_os_string());
        }
        args
    }

    /// The root's flags: its own server flags and the CA it trusts when it
    /// calls its leaves and merger (presenting its certificate).
    pub fn root_args(&self) -> Vec<std::ffi::OsString> {
        let mut args = self.server_args(false);
        args.push("--tls-ca".into());
        args.push(self.ca.clone().into_os_string());
        args
    }
}
