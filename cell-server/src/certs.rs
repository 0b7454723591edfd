//! A cell's certificate authority, kept in a directory: `ca.pem` and `ca.key`, and the
//! certificates it issued beside them (`NAME.pem` and `NAME.key`, with `/` in the principal
//! written `-`). `cell-server local` makes one for its throwaway cell; `cell-server cert`
//! issues more (a replica, a host, a user).
//!
//! The principal is the certificate's subject common name (see `proto::tls`). Keys are written
//! readable by their owner only; an existing CA is reused, so certificates issued at different
//! times trust each other. A CA is one cell's: a replica's certificate names its id, not its
//! cell.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

/// Flags of `cell-server cert`.
#[derive(clap::Args, Debug, Clone)]
pub struct CertArgs {
    /// The CA's directory (made, with a new CA, if it has none).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// The principal: replica/N for a replica, host/NAME for a host's mount, or a user's name.
    pub principal: String,
    /// Host names or IP addresses the holder serves on (a replica's, as clients and peers dial
    /// it): HOST,HOST,…
    #[arg(long, value_name = "HOST,...")]
    pub san: Option<String>,
    /// Days the certificate is valid from now (default 365).
    #[arg(long, default_value_t = 365)]
    pub days: i64,
    /// Make a certificate that expired yesterday (for testing that it is refused).
    #[arg(long, hide = true)]
    pub expired: bool,
}

/// The files of an issued certificate.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// The CA's name; the same every time, so that a CA read back from its key signs as itself.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "chubby cell CA");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params
}

/// Writes `data` to `path` with `mode`, replacing what was there.
fn write_file(path: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The CA in `dir`, made if there is none: its certificate (as an issuer) and key.
fn ca(dir: &Path) -> anyhow::Result<(rcgen::Certificate, KeyPair)> {
    std::fs::create_dir_all(dir)?;
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
    if key_path.exists() {
        let pem = proto::tls::read_checked(&key_path, true)?;
        let key = KeyPair::from_pem(&String::from_utf8_lossy(&pem))
            .map_err(|e| anyhow::anyhow!("{}: {e}", key_path.display()))?;
        let cert = ca_params().self_signed(&key)?;
        if !cert_path.exists() {
            write_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
        }
        return Ok((cert, key));
    }
    let key = KeyPair::generate()?;
    let mut params = ca_params();
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(3650);
    let cert = params.self_signed(&key)?;
    write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok((cert, key))
}

/// The file name of a principal's certificate (without extension).
pub fn file_stem(principal: &str) -> String {
    principal.chars().map(|c| if c.is_ascii_alphanumeric() || "@._-".contains(c) { c } else { '-' }).collect()
}

/// Issues a certificate for `args.principal` from the CA in `args.dir`.
pub fn issue(args: &CertArgs) -> anyhow::Result<Issued> {
    let p = &args.principal;
    if p.is_empty() || p.len() > 64 || p.chars().any(|c| c.is_control() || c.is_whitespace() || c == ',') || p == "*" {
        anyhow::bail!("{p:?} is no principal: 1 to 64 characters, no blanks, commas or control characters, not *");
    }
    let replica = matches!(proto::tls::Principal::parse(p), proto::tls::Principal::Replica(_));
    if (p.starts_with("replica/") || p.starts_with("host/"))
        && matches!(proto::tls::Principal::parse(p), proto::tls::Principal::User(_))
    {
        anyhow::bail!("{p:?} is neither a replica (replica/N, N from 1, plain decimal) nor a host (host/NAME, no @ , * / or blanks)");
    }
    if args.san.is_some() && !replica {
        anyhow::bail!("--san is for replicas' certificates: only a replica serves connections");
    }
    let stem = file_stem(&args.principal);
    if stem == "ca" {
        anyhow::bail!("{p:?} would be written over the CA's own files (ca.pem, ca.key)");
    }
    // Two principals may share a file name (host/x and host-x): never replace another's.
    if let Ok(pem) = std::fs::read(args.dir.join(format!("{stem}.pem"))) {
        use rustls::pki_types::pem::PemObject;
        let existing = rustls::pki_types::CertificateDer::from_pem_slice(&pem)
            .ok()
            .and_then(|der| proto::tls::principal_of_cert(&der).ok());
        if existing.as_deref().is_some_and(|e| e != p) {
            anyhow::bail!("{stem}.pem in {} is another principal's certificate", args.dir.display());
        }
    }
    let (ca_cert, ca_key) = ca(&args.dir)?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, args.principal.as_str());
    params.distinguished_name = name;
    for host in args.san.iter().flat_map(|s| s.split(',')).map(str::trim).filter(|h| !h.is_empty()) {
        params.subject_alt_names.push(match host.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(host.try_into().map_err(|e| anyhow::anyhow!("--san {host}: {e}"))?),
        });
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    // Only a replica's certificate may serve (clients and peers check for server use); every
    // certificate may be presented as a client's.
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    if replica {
        params.extended_key_usages.push(ExtendedKeyUsagePurpose::ServerAuth);
    }
    let now = time::OffsetDateTime::now_utc();
    if args.expired {
        params.not_before = now - time::Duration::days(30);
        params.not_after = now - time::Duration::days(1);
    } else {
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(args.days.clamp(1, 3650));
    }
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca_cert, &ca_key)?;
    let issued = Issued {
        cert: args.dir.join(format!("{stem}.pem")),
        key: args.dir.join(format!("{stem}.key")),
        ca: args.dir.join("ca.pem"),
    };
    write_file(&issued.key, key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&issued.cert, cert.pem().as_bytes(), 0o644)?;
    Ok(issued)
}

/// The certificate for `principal` in `dir`, issued again if it is missing or no longer loads
/// (expired, say).
pub fn ensure(dir: &Path, principal: &str, san: Option<&str>) -> anyhow::Result<Issued> {
    let stem = file_stem(principal);
    let existing =
        Issued { cert: dir.join(format!("{stem}.pem")), key: dir.join(format!("{stem}.key")), ca: dir.join("ca.pem") };
    let files =
        proto::tls::TlsFiles { cert: existing.cert.clone(), key: existing.key.clone(), ca: existing.ca.clone() };
    if proto::tls::Identity::load(&files).is_ok_and(|id| id.principal == principal) {
        return Ok(existing);
    }
    issue(&CertArgs {
        dir: dir.to_path_buf(),
        principal: principal.to_string(),
        san: san.map(String::from),
        days: 365,
        expired: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issued_certificate_names_its_principal_and_loads_with_its_ca() {
        let dir = tempfile::tempdir().unwrap();
        let args = |p: &str| CertArgs {
            dir: dir.path().to_path_buf(),
            principal: p.into(),
            san: p.starts_with("replica/").then(|| "127.0.0.1,localhost".into()),
            days: 30,
            expired: false,
        };
        let a = issue(&args("replica/1")).unwrap();
        // A second certificate from the CA read back from its files.
        let b = issue(&args("alice@build7")).unwrap();
        for (files, want) in [(&a, "replica/1"), (&b, "alice@build7")] {
            let id = proto::tls::Identity::load(&proto::tls::TlsFiles {
                cert: files.cert.clone(),
                key: files.key.clone(),
                ca: files.ca.clone(),
            })
            .unwrap();
            assert_eq!(id.principal, want);
            id.server_config(&[b"h2"]).unwrap();
        }
        assert_eq!(file_stem("replica/1"), "replica-1");
        // Only a replica serves, so only its certificate names addresses.
        let mut user = args("alice@build7");
        user.san = Some("127.0.0.1".into());
        assert!(issue(&user).unwrap_err().to_string().contains("--san is for replicas"));
        // Not over the CA's files, nor over another principal's.
        assert!(issue(&args("ca")).unwrap_err().to_string().contains("CA's own files"));
        issue(&args("host/x")).unwrap();
        assert!(issue(&args("host-x")).unwrap_err().to_string().contains("another principal's"));
        issue(&args("host/x")).expect("a principal's own certificate is issued again");
        for bad in ["replica/01", "host/a@b", "a b", "*", ""] {
            assert!(issue(&args(bad)).is_err(), "{bad:?} was issued");
        }
        assert_eq!(file_stem("host/build7"), "host-build7");
    }
}
