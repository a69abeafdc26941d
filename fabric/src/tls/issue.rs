//! Development certificates (`weft certs`): a CA, node certificates (with the node marker and
//! the hosts and IPs peers and clients dial) and client certificates, as PEM files; keys are
//! written with mode 0600. ECDSA P-256 keys, signed with SHA-256, by rcgen on ring.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};

use super::{CLIENT_MARKER, NODE_MARKER};

/// Most hosts one certificate may name.
pub const MAX_HOSTS: usize = 64;
/// Longest validity `weft certs` issues, in days (about 27 years).
pub const MAX_DAYS: u32 = 10_000;
/// How far back a new certificate's validity starts, for clocks a little behind.
const BACKDATE: time::Duration = time::Duration::hours(1);

/// Why a certificate could not be made or written. Nothing was written unless it says so.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An argument cannot work (a bad host name, zero days, no hosts).
    #[error("{0}")]
    Usage(String),
    /// The CA files could not be read or used.
    #[error("the CA: {0}")]
    Ca(String),
    /// rcgen refused to make the certificate.
    #[error("cannot make the certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file could not be written (or exists already, without `overwrite`).
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A node: server and client authentication, the URI SAN [`NODE_MARKER`].
    Node,
    /// A client or agent: client authentication, the URI SAN [`CLIENT_MARKER`].
    Client,
}

/// A certificate and its key, PEM. `Debug` shows no key.
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// The private key (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued").field("cert_pem", &self.cert_pem).finish_non_exhaustive()
    }
}

fn validity(params: &mut CertificateParams, days: u32) -> Result<(), Error> {
    if days == 0 || days > MAX_DAYS {
        return Err(Error::Usage(format!("--days must be from 1 to {MAX_DAYS}, not {days}")));
    }
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + time::Duration::days(i64::from(days));
    let mut serial: [u8; 16] = rand::random();
    serial[0] &= 0x7f; // a positive DER integer
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    Ok(())
}

/// A new self-signed CA named `common_name`, valid for `days`.
pub fn ca(common_name: &str, days: u32) -> Result<Issued, Error> {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut params, days)?;
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// A `kind` certificate named `common_name` for `hosts` (DNS names or IP addresses; a node
/// needs at least one), signed by the CA in `ca_cert_pem` / `ca_key_pem`, valid for `days`.
pub fn leaf(
    kind: Kind,
    ca_cert_pem: &str,
    ca_key_pem: &str,
    common_name: &str,
    hosts: &[String],
    days: u32,
) -> Result<Issued, Error> {
    if kind == Kind::Node && hosts.is_empty() {
        return Err(Error::Usage(
            "a node certificate needs at least one --host: the names and IPs peers and clients dial".into(),
        ));
    }
    if hosts.len() > MAX_HOSTS {
        return Err(Error::Usage(format!("{} hosts; at most {MAX_HOSTS}", hosts.len())));
    }
    let ca_key = KeyPair::from_pem(ca_key_pem)
        .map_err(|_| Error::Ca("the CA key is not a readable PEM key".into()))?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, ca_key)
        .map_err(|e| Error::Ca(format!("the CA certificate does not parse: {e}")))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, common_name);
    for host in hosts {
        let host = host.trim();
        let san = match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => {
                let not_a_name = || Error::Usage(format!("'{host}' is not a DNS name or IP address"));
                rustls::pki_types::DnsName::try_from(host).map_err(|_| not_a_name())?;
                SanType::DnsName(host.try_into().map_err(|_| not_a_name())?)
            }
        };
        params.subject_alt_names.push(san);
    }
    let marker = match kind {
        Kind::Node => NODE_MARKER,
        Kind::Client => CLIENT_MARKER,
    };
    params.subject_alt_names.push(SanType::URI(marker.try_into()?));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match kind {
        Kind::Node => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        Kind::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, days)?;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// Writes `issued` as `dir/NAME.pem` and `dir/NAME.key` (mode 0600), creating `dir`.
/// Existing files are refused unless `overwrite`. Returns the two paths.
pub fn write(dir: &Path, name: &str, issued: &Issued, overwrite: bool) -> Result<(PathBuf, PathBuf), Error> {
    if name.is_empty()
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        || name.starts_with('.')
    {
        return Err(Error::Usage(format!(
            "'{name}' is not a file name of [A-Za-z0-9._-] (not starting with '.')"
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::Write { path: dir.to_owned(), reason: e.to_string() })?;
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    if !overwrite {
        for path in [&cert, &key] {
            if path.exists() {
                return Err(Error::Write {
                    path: path.clone(),
                    reason: "it exists already (pass --force to replace it)".into(),
                });
            }
        }
    }
    write_file(&key, issued.key_pem.as_bytes(), 0o600)?;
    write_file(&cert, issued.cert_pem.as_bytes(), 0o644)?;
    Ok((cert, key))
}

/// Writes `bytes` to a temporary file with `mode` and renames it over `path`, so a node
/// watching `path` never reads half a file.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    use std::io::Write as _;
    let err = |e: std::io::Error| Error::Write { path: path.to_owned(), reason: e.to_string() };
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let result = (|| {
        let mut file = options.open(&tmp)?;
        #[cfg(unix)]
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::PeerIdentity;

    fn der(pem: &str) -> Vec<u8> {
        weft_agent::tls::parse_certs(pem.as_bytes(), "test").unwrap()[0].to_vec()
    }

    #[test]
    fn node_and_client_certificates_carry_their_marker() {
        let ca = ca("test CA", 30).unwrap();
        let node =
            leaf(Kind::Node, &ca.cert_pem, &ca.key_pem, "n1", &["127.0.0.1".into(), "localhost".into()], 30)
                .unwrap();
        let id = PeerIdentity::from_der(&der(&node.cert_pem)).unwrap();
        assert!(id.node, "{id:?}");
        assert_eq!(id.common_name.as_deref(), Some("n1"));
        let client = leaf(Kind::Client, &ca.cert_pem, &ca.key_pem, "alice", &[], 30).unwrap();
        assert!(!PeerIdentity::from_der(&der(&client.cert_pem)).unwrap().node);
        assert!(!format!("{client:?}").contains("PRIVATE KEY"), "Debug shows no key");
    }

    #[test]
    fn bad_arguments_are_named() {
        let ca = ca("test CA", 30).unwrap();
        let e = leaf(Kind::Node, &ca.cert_pem, &ca.key_pem, "n1", &[], 30).unwrap_err().to_string();
        assert!(e.contains("at least one --host"), "{e}");
        let e = leaf(Kind::Node, &ca.cert_pem, &ca.key_pem, "n1", &["bad host!".into()], 30).unwrap_err();
        assert!(e.to_string().contains("'bad host!' is not a DNS name"), "{e}");
        let e = leaf(Kind::Client, &ca.cert_pem, "nope", "a", &[], 30).unwrap_err().to_string();
        assert!(e.contains("CA key"), "{e}");
        assert!(self::ca("x", 0).unwrap_err().to_string().contains("--days"));
    }

    #[test]
    fn keys_are_private_and_files_are_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca("test CA", 30).unwrap();
        let (cert, key) = write(dir.path(), "ca", &ca, false).unwrap();
        assert!(cert.is_file());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let e = write(dir.path(), "ca", &ca, false).unwrap_err().to_string();
        assert!(e.contains("exists already"), "{e}");
        write(dir.path(), "ca", &ca, true).unwrap();
        assert!(write(dir.path(), "../x", &ca, false).is_err());
    }
}
