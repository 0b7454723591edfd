//! Mutual TLS for a cell: who is at the other end of a connection, from its certificate.
//!
//! Every certificate is issued by the cell's CA, and its subject common name (CN) is the
//! **principal** it proves:
//! - `replica/N`: replica `N` of the cell. Only it may open a peer link as `N` or send `N`'s
//!   snapshots.
//! - `host/NAME`: a host's daemon (the mount). The sessions it opens may each name one user of
//!   that host, `USER@NAME` (the mount opens one session per local user): the host is trusted
//!   for its own users, as Chubby trusts a host's credentials for the processes it runs, and
//!   for no one else's.
//! - anything else (`alice@build7`, `deploy-bot`): one user, who can be no one else.
//!
//! The CA is the trust boundary: whoever it signs for a name is that name. Keys must be
//! readable by their owner alone, and no file of an identity may be writable by others.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// The ALPN protocol of a peer link (Raft messages between replicas). Everything else on a
/// replica's port is gRPC over HTTP/2 (`h2`).
pub const ALPN_PEER: &[u8] = b"chubby-raft/1";
pub const ALPN_H2: &[u8] = b"h2";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {why}")]
    File { path: PathBuf, why: String },
    #[error("{0}")]
    Config(String),
}

/// Where an identity's files are: its certificate chain, its private key and the CA
/// certificates it trusts (all PEM).
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// What a certificate's principal lets its holder be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    Replica(u64),
    Host(String),
    User(String),
}

impl Principal {
    /// The kind of principal `name` is (see the module documentation). A replica's id is
    /// plain decimal (`replica/01` is no replica); a host's name has no `@`, `,`, `*`, `/` or
    /// blanks (anything else is a user's name).
    pub fn parse(name: &str) -> Principal {
        if let Some(n) = name.strip_prefix("replica/") {
            if let Ok(id) = n.parse::<u64>() {
                if id > 0 && id.to_string() == n {
                    return Principal::Replica(id);
                }
            }
        }
        match name.strip_prefix("host/") {
            Some(host) if valid_host(host) => Principal::Host(host.to_string()),
            _ => Principal::User(name.to_string()),
        }
    }

    /// The principal a session opened over a connection with this certificate gets, when the
    /// client asks for `claimed` (empty: whatever the certificate says). A host names one of its
    /// users (`USER@HOST`, or `USER` alone, which means the same); a user is only itself.
    pub fn session_principal(&self, claimed: &str) -> Result<String, String> {
        match self {
            Principal::User(me) if claimed.is_empty() || claimed == me => Ok(me.clone()),
            Principal::User(me) => Err(format!("the certificate is {me}'s, not {claimed}'s")),
            Principal::Host(host) => {
                let suffix = format!("@{host}");
                let user = claimed.strip_suffix(&suffix).unwrap_or(claimed);
                // A user's name may itself hold '@' (alice@corp.example): the host's own suffix
                // still makes it a name of this host, never another host's user.
                if user.is_empty() || user == "*" || user.contains([',', '\n']) || user.chars().any(char::is_control) {
                    return Err(format!("host {host} opens sessions for its own users only, not {claimed:?}"));
                }
                Ok(format!("{user}{suffix}"))
            }
            Principal::Replica(id) => Err(format!("replica/{id} is a replica's certificate, not a client's")),
        }
    }
}

/// Whether `name` may be a host's name in `host/NAME`.
fn valid_host(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && !name.chars().any(|c| c.is_whitespace() || c.is_control() || "@,*/".contains(c))
}

/// The principal a certificate proves: its subject's common name.
pub fn principal_of_cert(der: &[u8]) -> Result<String, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| format!("not a certificate: {e}"))?;
    let cn = cert.subject().iter_common_name().next().ok_or("the certificate's subject has no common name")?;
    let cn = cn.as_str().map_err(|e| format!("the certificate's common name is not text: {e}"))?;
    if cn.is_empty() {
        return Err("the certificate's common name is empty".into());
    }
    Ok(cn.to_string())
}

/// A loaded identity: a certificate chain and its key, the CA it trusts, and the principal its
/// certificate names.
#[derive(Clone)]
pub struct Identity {
    pub files: TlsFiles,
    pub chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    pub roots: Arc<RootCertStore>,
    pub principal: String,
    /// The PEM texts, for tonic's client configuration.
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub ca_pem: Vec<u8>,
    /// A replica's: another CA whose certificates clients may present (users and hosts, never
    /// replicas), where clients' certificates come from elsewhere than the cell's.
    client_roots: Option<Arc<RootCertStore>>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").field("files", &self.files).field("principal", &self.principal).finish()
    }
}

/// The crypto provider every TLS configuration here uses (one, named, so that no crate's
/// feature choice can leave rustls without a default or with two). It is ring, which tonic's
/// TLS already builds; rustls marks it deprecated because it lacks post-quantum key exchange,
/// which aws-lc-rs has at the price of a C build several times longer.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes ring rustls's process-wide default, for configurations built by other crates (tonic's
/// client). Harmless if already done.
#[allow(deprecated)]
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Reads an identity file, after checking what the open file is (a symlink is followed; what
/// is checked is the file read): owned by this user or root, not writable by others, and a key
/// readable by its owner only.
pub fn read_checked(path: &Path, secret: bool) -> Result<Vec<u8>, TlsError> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let err = |why: String| TlsError::File { path: path.to_path_buf(), why };
    use std::os::unix::fs::OpenOptionsExt;
    // Non-blocking, so that a FIFO put in a file's place does not hang the open.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| err(e.to_string()))?;
    let meta = file.metadata().map_err(|e| err(e.to_string()))?;
    if !meta.is_file() {
        return Err(err("not a regular file".into()));
    }
    let mode = meta.permissions().mode() & 0o777;
    if secret && mode & 0o077 != 0 {
        return Err(err(format!("a private key must be readable by its owner only (mode {mode:03o}; chmod 600 it)")));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me && meta.uid() != 0 {
        // Its owner could read a key, or replace a certificate or the CA this process trusts.
        return Err(err(format!("must be owned by this user (uid {me}) or root, not uid {}", meta.uid())));
    }
    if mode & 0o022 != 0 {
        return Err(err(format!("writable by others (mode {mode:03o}): anyone could replace it")));
    }
    let mut data = Vec::new();
    file.read_to_end(&mut data).map_err(|e| err(e.to_string()))?;
    Ok(data)
}

/// Refuses a certificate outside its validity period (its holder would be refused by every
/// peer, with less clear words).
fn check_validity(der: &[u8]) -> Result<(), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| format!("not a certificate: {e}"))?;
    let validity = cert.validity();
    let now = x509_parser::time::ASN1Time::now();
    if now > validity.not_after {
        return Err(format!("the certificate expired on {}", validity.not_after));
    }
    if now < validity.not_before {
        return Err(format!("the certificate is not valid before {}", validity.not_before));
    }
    Ok(())
}

impl Identity {
    /// Loads and checks the files: permissions, that each holds what it should, and that the
    /// certificate names a principal.
    pub fn load(files: &TlsFiles) -> Result<Identity, TlsError> {
        install_default_provider();
        let cert_pem = read_checked(&files.cert, false)?;
        let key_pem = read_checked(&files.key, true)?;
        let ca_pem = read_checked(&files.ca, false)?;
        let file_err = |path: &Path, why: String| TlsError::File { path: path.to_path_buf(), why };
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(&cert_pem)
                .collect::<Result<_, _>>()
                .map_err(|e| file_err(&files.cert, format!("not PEM certificates: {e:?}")))?;
        let Some(leaf) = chain.first() else {
            return Err(file_err(&files.cert, "holds no certificate".into()));
        };
        let principal = principal_of_cert(leaf).map_err(|e| file_err(&files.cert, e))?;
        check_validity(leaf).map_err(|e| file_err(&files.cert, e))?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| file_err(&files.key, format!("not a PEM private key: {e:?}")))?;
        let mut roots = RootCertStore::empty();
        let mut any = false;
        for ca in CertificateDer::pem_slice_iter(&ca_pem) {
            let ca = ca.map_err(|e| file_err(&files.ca, format!("not PEM certificates: {e:?}")))?;
            roots.add(ca).map_err(|e| file_err(&files.ca, format!("not a CA certificate: {e}")))?;
            any = true;
        }
        if !any {
            return Err(file_err(&files.ca, "holds no certificate".into()));
        }
        Ok(Identity {
            files: files.clone(),
            chain,
            key: Arc::new(key),
            roots: Arc::new(roots),
            principal,
            cert_pem,
            key_pem,
            ca_pem,
            client_roots: None,
        })
    }

    /// Also accepts clients whose certificates the CA(s) in `path` issued (a replica's
    /// `--client-ca`). A replica's certificate from that CA is still no replica's: see
    /// [`Identity::from_cell_ca`].
    pub fn with_client_ca(mut self, path: &Path) -> Result<Identity, TlsError> {
        let file_err = |why: String| TlsError::File { path: path.to_path_buf(), why };
        let pem = read_checked(path, false)?;
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(&pem) {
            let ca = ca.map_err(|e| file_err(format!("not PEM certificates: {e:?}")))?;
            roots.add(ca).map_err(|e| file_err(format!("not a CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(file_err("holds no certificate".into()));
        }
        self.client_roots = Some(Arc::new(roots));
        Ok(self)
    }

    /// Whether `chain` (a peer's certificates, leaf first) was issued by the cell's own CA:
    /// what a replica's certificate must be, when clients may come from another CA.
    pub fn from_cell_ca(&self, chain: &[CertificateDer<'_>]) -> bool {
        let Some(leaf) = chain.first() else { return false };
        if self.client_roots.is_none() {
            // One CA: the handshake already checked the chain against it.
            return true;
        }
        let Ok(verifier) = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider()).build() else {
            return false;
        };
        verifier.verify_client_cert(leaf, &chain[1..], rustls::pki_types::UnixTime::now()).is_ok()
    }

    /// A replica's server side: every client must present a certificate from the CA (or the
    /// clients' CA). `alpn`
    /// lists the protocols served, in order of preference.
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, TlsError> {
        let config_err = |e: &dyn std::fmt::Display| TlsError::Config(e.to_string());
        let roots = match &self.client_roots {
            None => self.roots.clone(),
            Some(clients) => {
                let mut both = (*self.roots).clone();
                both.roots.extend(clients.roots.iter().cloned());
                Arc::new(both)
            }
        };
        let verifier =
            WebPkiClientVerifier::builder_with_provider(roots, provider()).build().map_err(|e| config_err(&e))?;
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| config_err(&e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| config_err(&e))?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }

    /// A client side that presents this identity and trusts servers the CA signed for the
    /// address dialled.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>, TlsError> {
        let config_err = |e: &dyn std::fmt::Display| TlsError::Config(e.to_string());
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| config_err(&e))?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| config_err(&e))?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

impl Identity {
    /// tonic's client side for this identity (gRPC over TLS with ALPN h2).
    pub fn tonic_config(&self) -> tonic::transport::ClientTlsConfig {
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_pem))
            .identity(tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem))
    }
}

/// The host of `HOST:PORT` (`[v6]:PORT` without its brackets): the name a server's
/// certificate must carry.
pub fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host)
}

/// The principal of the certificate a peer presented on a TLS connection.
pub fn peer_principal(certs: Option<&[CertificateDer<'_>]>) -> Result<Principal, String> {
    let leaf = certs.and_then(|c| c.first()).ok_or("no client certificate")?;
    principal_of_cert(leaf).map(|name| Principal::parse(&name))
}

/// The principal of user `uid` of this host: `NAME@HOST`, with the user's name from the
/// password database (`uid<N>` if it has none) and the host's name from /etc/hostname.
pub fn local_principal(uid: u32) -> String {
    let user = user_name(uid).unwrap_or_else(|| format!("uid{uid}"));
    match host_name() {
        Some(host) => format!("{user}@{host}"),
        None => user,
    }
}

/// This host's name (/etc/hostname), if it has one.
pub fn host_name() -> Option<String> {
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    Some(host).filter(|h| !h.is_empty())
}

/// The password database's name for `uid`.
pub fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: an all-zero passwd is a valid value of this plain C struct (null pointers).
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is to memory owned here and live for the call; `buf`'s length is
    // passed with it, and getpwuid_r writes only within `pwd` and `buf`.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr().cast(), buf.len(), &mut found) };
    if rc != 0 || found.is_null() || pwd.pw_name.is_null() {
        return None;
    }
    // SAFETY: on success pw_name points to a NUL-terminated string inside `buf`.
    let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
    Some(name.to_string_lossy().into_owned()).filter(|n| !n.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_names_its_own_users_and_a_user_only_itself() {
        let host = Principal::parse("host/build7");
        assert_eq!(host, Principal::Host("build7".into()));
        assert_eq!(host.session_principal("alice@build7").unwrap(), "alice@build7");
        assert_eq!(host.session_principal("alice").unwrap(), "alice@build7");
        // Another host's user is not this host's to name: the name stays this host's.
        assert_eq!(host.session_principal("alice@build8").unwrap(), "alice@build8@build7");
        assert_eq!(host.session_principal("alice@corp.example").unwrap(), "alice@corp.example@build7");
        assert!(host.session_principal("").is_err());
        assert!(host.session_principal("@build7").is_err());
        assert!(host.session_principal("*").is_err());
        assert!(host.session_principal("a,b").is_err());

        let alice = Principal::parse("alice@build7");
        assert_eq!(alice.session_principal("").unwrap(), "alice@build7");
        assert_eq!(alice.session_principal("alice@build7").unwrap(), "alice@build7");
        assert!(alice.session_principal("bob@build7").is_err());

        assert_eq!(Principal::parse("replica/3"), Principal::Replica(3));
        assert!(Principal::Replica(3).session_principal("").is_err());
        // Not a replica's name: an ordinary user.
        assert_eq!(Principal::parse("replica/x"), Principal::User("replica/x".into()));
        assert_eq!(Principal::parse("host/"), Principal::User("host/".into()));
        for not_a_replica in ["replica/01", "replica/+1", "replica/0", "replica/ 1"] {
            assert_eq!(Principal::parse(not_a_replica), Principal::User(not_a_replica.into()));
        }
        for not_a_host in ["host/a@b", "host/a,b", "host/*", "host/a b", "host/a/b"] {
            assert_eq!(Principal::parse(not_a_host), Principal::User(not_a_host.into()));
        }
    }
}
