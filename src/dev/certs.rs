//! Development certificates: a local CA (EC P-256) and X509-SVIDs for named
//! workloads, written in the three-file shape Kubernetes mounts
//! (`tls.crt`, `tls.key`, `ca.crt`). Tests use the same code, with
//! [`LeafSpec`] bent out of shape, to produce every kind of bad certificate.

use crate::sidecar::identity::SpiffeId;
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
    PKCS_ECDSA_P256_SHA256,
};
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// What went wrong making or writing certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} exists but {1} is missing; remove both or pass --force to make a new CA")]
    HalfCa(PathBuf, PathBuf),
    #[error("{0}: existing dev CA is unusable ({1}); pass --force to replace it")]
    BadCa(PathBuf, String),
    #[error("workload {0:?} is not of the form <namespace>/<service-account>")]
    BadWorkload(String),
    #[error("workload {workload:?}: {part} {name:?} is not a valid Kubernetes name ({rule})")]
    BadName {
        workload: String,
        part: &'static str,
        name: String,
        rule: &'static str,
    },
    #[error("invalid SPIFFE ID for workload {workload:?}: {reason}")]
    BadId { workload: String, reason: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CertsError + '_ {
    move |source| CertsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A certificate authority able to issue SVIDs.
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
}

/// A certificate and its private key, PEM encoded.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

impl DevCa {
    /// A new self-signed root for `trust_domain`, valid for `ttl`.
    pub fn generate(trust_domain: &str, ttl: Duration) -> Result<DevCa, CertsError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let params = ca_params(
            trust_domain,
            &format!("meshguard dev CA ({trust_domain})"),
            ttl,
        )?;
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Ok(DevCa {
            cert_pem: cert.pem(),
            key_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads an existing CA from PEM.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<DevCa, CertsError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(DevCa {
            issuer,
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
        })
    }

    /// An intermediate CA signed by this one (for chain tests).
    pub fn intermediate(
        &self,
        trust_domain: &str,
        name: &str,
        ttl: Duration,
    ) -> Result<DevCa, CertsError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let params = ca_params(trust_domain, name, ttl)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let key_pem = key.serialize_pem();
        Ok(DevCa {
            cert_pem: cert.pem(),
            key_pem,
            issuer: Issuer::new(params, key),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Issues a leaf certificate as described by `spec`.
    pub fn issue(&self, spec: &LeafSpec) -> Result<Issued, CertsError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, spec.common_name.clone());
        for uri in &spec.uris {
            params
                .subject_alt_names
                .push(SanType::URI(uri.as_str().try_into()?));
        }
        for dns in &spec.dns {
            params
                .subject_alt_names
                .push(SanType::DnsName(dns.as_str().try_into()?));
        }
        params.is_ca = if spec.is_ca {
            IsCa::Ca(BasicConstraints::Unconstrained)
        } else {
            IsCa::ExplicitNoCa
        };
        params.key_usages = spec.key_usages.clone();
        params.extended_key_usages = spec.extended_key_usages.clone();
        params.custom_extensions = spec.extra_extensions.clone();
        params.not_before = spec.not_before;
        params.not_after = spec.not_after;
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        })
    }
}

fn ca_params(
    trust_domain: &str,
    name: &str,
    ttl: Duration,
) -> Result<CertificateParams, CertsError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "meshguard dev");
    // A SPIFFE signing certificate may carry the trust domain's own ID.
    params.subject_alt_names.push(SanType::URI(
        format!("spiffe://{trust_domain}").as_str().try_into()?,
    ));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + ttl;
    Ok(params)
}

/// Everything about a leaf certificate, defaulting to a well-formed SVID.
/// Tests change one field at a time to make each kind of bad certificate.
#[derive(Clone)]
pub struct LeafSpec {
    pub common_name: String,
    pub uris: Vec<String>,
    pub dns: Vec<String>,
    pub is_ca: bool,
    pub key_usages: Vec<KeyUsagePurpose>,
    pub extended_key_usages: Vec<ExtendedKeyUsagePurpose>,
    pub extra_extensions: Vec<CustomExtension>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl LeafSpec {
    /// A correct X509-SVID for `id`, valid from a minute ago for `ttl`.
    pub fn svid(id: &str, ttl: Duration) -> LeafSpec {
        let now = OffsetDateTime::now_utc();
        LeafSpec {
            common_name: id.rsplit('/').next().unwrap_or(id).to_owned(),
            uris: vec![id.to_owned()],
            dns: Vec::new(),
            is_ca: false,
            key_usages: vec![KeyUsagePurpose::DigitalSignature],
            extended_key_usages: vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            extra_extensions: Vec::new(),
            not_before: now - Duration::minutes(1),
            not_after: now + ttl,
        }
    }
}

/// Where `write_dev_certs` put one workload's files.
#[derive(Debug, Clone)]
pub struct WorkloadFiles {
    pub id: SpiffeId,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub bundle: PathBuf,
}

/// What `meshguard certs dev` produced.
#[derive(Debug)]
pub struct DevCerts {
    pub ca_cert: PathBuf,
    pub ca_reused: bool,
    pub workloads: Vec<WorkloadFiles>,
}

/// Options of `meshguard certs dev`.
pub struct DevCertsOptions<'a> {
    pub out_dir: &'a Path,
    pub trust_domain: &'a str,
    /// `namespace/service-account` pairs.
    pub workloads: &'a [String],
    pub ttl: Duration,
    pub ca_ttl: Duration,
    /// Replace an existing CA instead of reusing it.
    pub force: bool,
}

/// Kubernetes' own rules, so that the SPIFFE ID and the DNS SAN
/// `sa.ns.svc.cluster.local` name a workload that can exist: a namespace
/// is an RFC 1123 label, a service account an RFC 1123 subdomain.
fn check_k8s_names(workload: &str, ns: &str, sa: &str) -> Result<(), CertsError> {
    const LABEL: &str = "at most 63 characters: lowercase letters, digits and '-', \
                         starting and ending with a letter or digit";
    const SUBDOMAIN: &str = "at most 253 characters: dot-separated parts of lowercase \
                             letters, digits and '-', each starting and ending with a letter or digit";
    let bad = |part, name: &str, rule| CertsError::BadName {
        workload: workload.to_owned(),
        part,
        name: name.to_owned(),
        rule,
    };
    if !is_dns_label(ns) {
        return Err(bad("namespace", ns, LABEL));
    }
    if sa.len() > 253 || !sa.split('.').all(is_dns_label) {
        return Err(bad("service account", sa, SUBDOMAIN));
    }
    Ok(())
}

/// An RFC 1123 label as Kubernetes checks it (lowercase only).
fn is_dns_label(s: &str) -> bool {
    let inner = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    (1..=63).contains(&s.len())
        && s.bytes().all(|c| inner(c) || c == b'-')
        && s.bytes().next().is_some_and(inner)
        && s.bytes().last().is_some_and(inner)
}

/// Writes (or reuses) the dev CA and one SVID per workload.
pub fn write_dev_certs(opts: &DevCertsOptions<'_>) -> Result<DevCerts, CertsError> {
    // Check every argument before touching the disk.
    let mut requested = Vec::new();
    for workload in opts.workloads {
        let (ns, sa) = workload
            .split_once('/')
            .filter(|(n, s)| !n.is_empty() && !s.is_empty() && !s.contains('/'))
            .ok_or_else(|| CertsError::BadWorkload(workload.clone()))?;
        check_k8s_names(workload, ns, sa)?;
        let id = SpiffeId::from_k8s(opts.trust_domain, ns, sa).map_err(|e| CertsError::BadId {
            workload: workload.clone(),
            reason: e.to_string(),
        })?;
        requested.push((ns, sa, id));
    }
    let out = opts.out_dir;
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    let (ca_cert_path, ca_key_path) = (out.join("ca.crt"), out.join("ca.key"));
    let (ca, ca_reused) = match (ca_cert_path.exists(), ca_key_path.exists(), opts.force) {
        (true, true, false) => {
            let cert = std::fs::read_to_string(&ca_cert_path).map_err(io_err(&ca_cert_path))?;
            let key = std::fs::read_to_string(&ca_key_path).map_err(io_err(&ca_key_path))?;
            let ca = DevCa::from_pem(&cert, &key)
                .map_err(|e| CertsError::BadCa(ca_cert_path.clone(), e.to_string()))?;
            (ca, true)
        }
        (true, false, false) => return Err(CertsError::HalfCa(ca_cert_path, ca_key_path)),
        (false, true, false) => return Err(CertsError::HalfCa(ca_key_path, ca_cert_path)),
        _ => {
            let ca = DevCa::generate(opts.trust_domain, opts.ca_ttl)?;
            write_file(&ca_cert_path, ca.cert_pem(), false)?;
            write_file(&ca_key_path, ca.key_pem(), true)?;
            (ca, false)
        }
    };
    let mut workloads = Vec::new();
    for (ns, sa, id) in requested {
        let mut spec = LeafSpec::svid(id.as_str(), opts.ttl);
        spec.dns = vec![format!("{sa}.{ns}.svc.cluster.local")];
        let issued = ca.issue(&spec)?;
        let dir = out.join(ns).join(sa);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let files = WorkloadFiles {
            id,
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
            bundle: dir.join("ca.crt"),
        };
        write_file(&files.key, &issued.key_pem, true)?;
        write_file(&files.cert, &issued.cert_pem, false)?;
        write_file(&files.bundle, ca.cert_pem(), false)?;
        workloads.push(files);
    }
    Ok(DevCerts {
        ca_cert: ca_cert_path,
        ca_reused,
        workloads,
    })
}

/// Writes via a temporary file and rename, so a reader (or a watching
/// sidecar) never sees half a file. Private keys are readable by the owner only.
pub fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), CertsError> {
    let tmp = path.with_extension("tmp~");
    {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(if private { 0o600 } else { 0o644 });
        }
        let mut f = opts.open(&tmp).map_err(io_err(&tmp))?;
        f.write_all(contents.as_bytes()).map_err(io_err(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io_err(path))
}
