//! Authentication at the root: bearer tokens, kept as SHA-256 hashes, each
//! with limits of its own.
//!
//! A caller of `Search` or `Root/Query` sends `authorization: Bearer TOKEN`.
//! The root hashes the token and compares the hash with every known one in
//! constant time (no early exit, no lookup keyed by the secret), so neither
//! the file nor the process holds a token, and timing tells nothing about
//! one. Health and reflection stay open.
//!
//! - no `authorization`, or not `Bearer ...`: UNAUTHENTICATED;
//! - an unknown or revoked token: PERMISSION_DENIED (one message for both);
//! - over the token's own limits (the largest `k`, syntax mode):
//!   PERMISSION_DENIED naming the limit; over its rate: RESOURCE_EXHAUSTED
//!   (retry later), so that one tenant's flood does not starve the others.
//!
//! The tokens file (TOML, `--auth-tokens FILE`), readable by its owner only:
//!
//! ```toml
//! [[token]]
//! name = "search-ui"                # for logs and messages; never the token
//! sha256 = "9f86d081884c7d65..."    # printf %s "$TOKEN" | sha256sum
//! max_k = 100                       # optional
//! syntax = false                    # optional, default true
//! rate = 50.0                       # optional: requests per second
//! burst = 100                       # optional, default: one second's worth
//!
//! [[token]]
//! name = "old-batch"
//! sha256 = "..."
//! revoked = true
//! ```
//!
//! [`Authenticator::reload`] (the root calls it on SIGHUP) reads the file
//! again and swaps the new set in at once: calls in flight and connections
//! are untouched; a token whose name and rate stay keeps its rate bucket. A
//! file that does not load leaves the previous set in force.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tonic::Status;
use tonic::metadata::MetadataMap;

/// Why a tokens file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read the tokens file {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the tokens file {} can be read by every user (mode {mode:o}): make it readable by its owner only (chmod 600)",
        .path.display()
    )]
    WorldReadable { path: PathBuf, mode: u32 },
    #[error("the tokens file {} is not valid TOML: {reason}", .path.display())]
    Syntax { path: PathBuf, reason: String },
    #[error("token {name:?} in {}: {reason}", .path.display())]
    Token {
        path: PathBuf,
        name: String,
        reason: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    sha256: String,
    #[serde(default)]
    revoked: bool,
    max_k: Option<u32>,
    #[serde(default = "allowed")]
    syntax: bool,
    rate: Option<f64>,
    burst: Option<u32>,
}

fn allowed() -> bool {
    true
}

/// What a token may do.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLimits {
    /// The largest `k` of a search (the root's own limit applies anyway).
    pub max_k: Option<u32>,
    /// Whether syntax-mode queries are allowed.
    pub syntax: bool,
    /// Requests per second, and how many may come at once.
    pub rate: Option<(f64, u32)>,
}

/// The caller a token names.
#[derive(Debug)]
pub struct Tenant {
    pub name: String,
    pub limits: TokenLimits,
    bucket: Arc<Mutex<Bucket>>,
}

/// A token bucket: `tokens` left, refilled at the tenant's rate.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled_at: Instant,
}

impl Tenant {
    /// A search's `k` (0: the default) and mode against the token's limits.
    pub fn check_search(&self, k: u32, default_k: u32, syntax: bool) -> Result<(), Status> {
        let k = if k == 0 { default_k } else { k };
        if let Some(max_k) = self.limits.max_k.filter(|max_k| k > *max_k) {
            return Err(Status::permission_denied(format!(
                "token {:?} may ask for at most k = {max_k}, the request asks for {k}",
                self.name
            )));
        }
        if syntax && !self.limits.syntax {
            return Err(Status::permission_denied(format!(
                "token {:?} may not use syntax-mode queries",
                self.name
            )));
        }
        Ok(())
    }

    /// Takes one request from the token's rate, if it has one.
    pub fn take_rate(&self) -> Result<(), Status> {
        let Some((rate, burst)) = self.limits.rate else {
            return Ok(());
        };
        let mut bucket = self
            .bucket
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        let refill = now.duration_since(bucket.refilled_at).as_secs_f64() * rate;
        bucket.tokens = (bucket.tokens + refill).min(f64::from(burst));
        bucket.refilled_at = now;
        if bucket.tokens < 1.0 {
            return Err(Status::resource_exhausted(format!(
                "token {:?} is over its rate of {rate} requests per second; retry later",
                self.name
            )));
        }
        bucket.tokens -= 1.0;
        Ok(())
    }
}

struct Known {
    digest: [u8; 32],
    revoked: bool,
    tenant: Arc<Tenant>,
}

/// The tokens of one reading of the file.
pub struct TokenSet {
    known: Vec<Known>,
}

impl fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self
            .known
            .iter()
            .map(|known| known.tenant.name.as_str())
            .collect();
        f.debug_struct("TokenSet").field("names", &names).finish()
    }
}

impl TokenSet {
    /// Parses a tokens file's text; rate buckets of `previous` carry over
    /// to tokens of the same name and rate.
    pub fn parse(
        path: &Path,
        text: &str,
        previous: Option<&TokenSet>,
    ) -> Result<TokenSet, AuthError> {
        let file: TokenFile = toml::from_str(text).map_err(|error| AuthError::Syntax {
            path: path.to_owned(),
            reason: error.message().to_owned(),
        })?;
        let kept: HashMap<&str, &Arc<Tenant>> = previous
            .map(|set| {
                set.known
                    .iter()
                    .map(|known| (known.tenant.name.as_str(), &known.tenant))
                    .collect()
            })
            .unwrap_or_default();
        let mut names = HashSet::new();
        let mut digests = HashSet::new();
        let mut known = Vec::with_capacity(file.token.len());
        for entry in file.token {
            let bad = |reason: String| AuthError::Token {
                path: path.to_owned(),
                name: entry.name.clone(),
                reason,
            };
            if entry.name.is_empty() || !names.insert(entry.name.clone()) {
                return Err(bad("names must be given and distinct".to_owned()));
            }
            let digest = parse_digest(&entry.sha256).ok_or_else(|| {
                bad("sha256 must be 64 hex digits, the SHA-256 of the token".to_owned())
            })?;
            if !digests.insert(digest) {
                return Err(bad("the same sha256 as another token".to_owned()));
            }
            let rate = match entry.rate {
                None => None,
                Some(rate) if rate.is_finite() && rate > 0.0 => {
                    let burst = entry.burst.unwrap_or(rate.ceil().max(1.0) as u32).max(1);
                    Some((rate, burst))
                }
                Some(rate) => return Err(bad(format!("rate must be above 0, got {rate}"))),
            };
            let limits = TokenLimits {
                max_k: entry.max_k,
                syntax: entry.syntax,
                rate,
            };
            let bucket = match kept.get(entry.name.as_str()) {
                Some(old) if old.limits.rate == limits.rate => Arc::clone(&old.bucket),
                _ => Arc::new(Mutex::new(Bucket {
                    tokens: f64::from(rate.map_or(1, |(_, burst)| burst)),
                    refilled_at: Instant::now(),
                })),
            };
            known.push(Known {
                digest,
                revoked: entry.revoked,
                tenant: Arc::new(Tenant {
                    name: entry.name,
                    limits,
                    bucket,
                }),
            });
        }
        Ok(TokenSet { known })
    }

    /// The tokens in force (not revoked).
    pub fn active(&self) -> usize {
        self.known.iter().filter(|known| !known.revoked).count()
    }

    /// The tenant of `token`, comparing its hash with every known hash in
    /// constant time.
    fn find(&self, token: &str) -> Option<&Known> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for known in &self.known {
            if constant_time_eq(&known.digest, &digest) {
                found = Some(known);
            }
        }
        found.filter(|known| !known.revoked)
    }
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut digest = [0u8; 32];
    for (byte, pair) in digest.iter_mut().zip(hex.as_bytes().chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(digest)
}

/// Whether `a == b`, looking at every byte whatever the first difference.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let difference = a
        .iter()
        .zip(b)
        .fold(0u8, |difference, (x, y)| difference | (x ^ y));
    std::hint::black_box(difference) == 0
}

/// The tokens file and the set read from it last.
pub struct Authenticator {
    path: PathBuf,
    tokens: RwLock<Arc<TokenSet>>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("path", &self.path)
            .field("tokens", &*self.current())
            .finish()
    }
}

impl Authenticator {
    /// Reads `path` (refused when every user may read it).
    pub fn load(path: impl Into<PathBuf>) -> Result<Authenticator, AuthError> {
        let path = path.into();
        let tokens = read(&path, None)?;
        Ok(Authenticator {
            path,
            tokens: RwLock::new(Arc::new(tokens)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn current(&self) -> Arc<TokenSet> {
        Arc::clone(
            &self
                .tokens
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    /// Reads the file again; on success the new set is in force at once,
    /// and the number of tokens in force is returned. On failure the
    /// previous set stays.
    pub fn reload(&self) -> Result<usize, AuthError> {
        let previous = self.current();
        let tokens = read(&self.path, Some(&previous))?;
        let active = tokens.active();
        *self
            .tokens
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(tokens);
        Ok(active)
    }

    /// The tenant of a request's bearer token.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Arc<Tenant>, Status> {
        let Some(value) = metadata.get("authorization") else {
            return Err(Status::unauthenticated(
                "no credentials: send the metadata `authorization: Bearer <token>`",
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .ok_or_else(|| {
                Status::unauthenticated("the authorization metadata must be `Bearer <token>`")
            })?;
        let tokens = self.current();
        let known = tokens
            .find(token)
            .ok_or_else(|| Status::permission_denied("the token is unknown or revoked"))?;
        Ok(Arc::clone(&known.tenant))
    }
}

fn read(path: &Path, previous: Option<&TokenSet>) -> Result<TokenSet, AuthError> {
    let read_error = |source| AuthError::Read {
        path: path.to_owned(),
        source,
    };
    let metadata = std::fs::metadata(path).map_err(read_error)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o007 != 0 {
            return Err(AuthError::WorldReadable {
                path: path.to_owned(),
                mode,
            });
        }
    }
    let text = std::fs::read_to_string(path).map_err(read_error)?;
    TokenSet::parse(path, &text, previous)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha256(token: &str) -> String {
        Sha256::digest(token.as_bytes())
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }

    fn set(text: &str) -> TokenSet {
        TokenSet::parse(Path::new("tokens.toml"), text, None).unwrap()
    }

    fn bearer(token: &str) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        metadata.insert("authorization", format!("Bearer {token}").parse().unwrap());
        metadata
    }

    fn authenticator(text: &str) -> Authenticator {
        Authenticator {
            path: PathBuf::from("tokens.toml"),
            tokens: RwLock::new(Arc::new(set(text))),
        }
    }

    #[test]
    fn missing_malformed_unknown_and_revoked_tokens_get_their_codes() {
        let auth = authenticator(&format!(
            "[[token]]\nname = \"ui\"\nsha256 = \"{}\"\n[[token]]\nname = \"old\"\nsha256 = \"{}\"\nrevoked = true\n",
            sha256("good"),
            sha256("gone")
        ));
        assert_eq!(auth.authenticate(&bearer("good")).unwrap().name, "ui");
        let code = |metadata: &MetadataMap| auth.authenticate(metadata).unwrap_err().code();
        assert_eq!(code(&MetadataMap::new()), tonic::Code::Unauthenticated);
        let mut basic = MetadataMap::new();
        basic.insert("authorization", "Basic dXNlcg==".parse().unwrap());
        assert_eq!(code(&basic), tonic::Code::Unauthenticated);
        assert_eq!(code(&bearer("wrong")), tonic::Code::PermissionDenied);
        assert_eq!(code(&bearer("gone")), tonic::Code::PermissionDenied);
        // No message names or echoes a token.
        let message = auth
            .authenticate(&bearer("wrong"))
            .unwrap_err()
            .message()
            .to_owned();
        assert!(!message.contains("wrong"), "{message}");
    }

    #[test]
    fn limits_and_rates_are_the_tokens_own() {
        let auth = authenticator(&format!(
            "[[token]]\nname = \"small\"\nsha256 = \"{}\"\nmax_k = 5\nsyntax = false\nrate = 2.0\n",
            sha256("s")
        ));
        let tenant = auth.authenticate(&bearer("s")).unwrap();
        assert!(tenant.check_search(5, 10, false).is_ok());
        let status = tenant.check_search(0, 10, false).unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(status.message().contains("at most k = 5"), "{status:?}");
        assert_eq!(
            tenant.check_search(1, 10, true).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        // A burst of two, then refused until the bucket refills.
        assert!(tenant.take_rate().is_ok() && tenant.take_rate().is_ok());
        assert_eq!(
            tenant.take_rate().unwrap_err().code(),
            tonic::Code::ResourceExhausted
        );
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let parse = |text: &str| {
            TokenSet::parse(Path::new("t.toml"), text, None)
                .unwrap_err()
                .to_string()
        };
        assert!(parse("[[token]]\nname = \"a\"\nsha256 = \"abc\"\n").contains("64 hex digits"));
        let twice = format!(
            "[[token]]\nname = \"a\"\nsha256 = \"{0}\"\n[[token]]\nname = \"b\"\nsha256 = \"{0}\"\n",
            sha256("x")
        );
        assert!(parse(&twice).contains("the same sha256"));
        assert!(parse("[[token]]\nname = \"a\"\nsha = \"x\"\n").contains("not valid TOML"));
        let slow = format!(
            "[[token]]\nname = \"a\"\nsha256 = \"{}\"\nrate = 0.0\n",
            sha256("x")
        );
        assert!(parse(&slow).contains("rate must be above 0"));
    }

    #[test]
    fn a_world_readable_file_is_refused_and_a_reload_keeps_the_old_set_on_error() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("fanout-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokens.toml");
        std::fs::write(
            &path,
            format!("[[token]]\nname = \"a\"\nsha256 = \"{}\"\n", sha256("one")),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = Authenticator::load(&path).unwrap_err().to_string();
        assert!(error.contains("chmod 600"), "{error}");

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let auth = Authenticator::load(&path).unwrap();
        assert!(auth.authenticate(&bearer("one")).is_ok());
        std::fs::write(&path, "not toml [").unwrap();
        assert!(auth.reload().is_err());
        assert!(
            auth.authenticate(&bearer("one")).is_ok(),
            "the old set stays"
        );
        std::fs::write(
            &path,
            format!("[[token]]\nname = \"b\"\nsha256 = \"{}\"\n", sha256("two")),
        )
        .unwrap();
        assert_eq!(auth.reload().unwrap(), 1);
        assert!(auth.authenticate(&bearer("one")).is_err());
        assert!(auth.authenticate(&bearer("two")).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
