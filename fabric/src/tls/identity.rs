//! Who is at the other end of a TLS connection: read from the certificate it presented
//! (which rustls has already verified against the cluster CA).

use x509_parser::extensions::GeneralName;

use super::NODE_MARKER;

/// What a verified peer certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The subject's common name, if it has one.
    pub common_name: Option<String>,
    /// The certificate's serial number, in hex (colon-separated bytes).
    pub serial: String,
    /// Whether it is a node certificate: it carries the URI SAN [`NODE_MARKER`].
    pub node: bool,
}

impl PeerIdentity {
    /// The identity in a DER certificate; `None` if it does not parse.
    pub fn from_der(der: &[u8]) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let node = cert.subject_alternative_name().ok().flatten().is_some_and(|san| {
            san.value
                .general_names
                .iter()
                .any(|name| matches!(name, GeneralName::URI(uri) if *uri == NODE_MARKER))
        });
        let common_name =
            cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_owned);
        Some(Self { common_name, serial: cert.raw_serial_as_string(), node })
    }

    /// "CN x, serial y" for messages.
    pub fn describe(&self) -> String {
        match &self.common_name {
            Some(cn) => format!("CN '{cn}', serial {}", self.serial),
            None => format!("serial {}", self.serial),
        }
    }
}
