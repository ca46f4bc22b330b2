//! The load generator's TLS client settings: ring as the one provider (as mxguard), the
//! server verified against the bench's own CA, and TLS session resumption either shared by
//! every connection of a run (one in-memory cache in the one config) or disabled.

use std::path::Path;
use std::sync::Arc;

use rustls::client::Resumption;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// Sessions kept for resumption: more than the largest run opens at once, so a ticket is
/// never evicted before a connection could use it.
const RESUMPTION_CACHE: usize = 4096;

pub fn client_config(ca_pem: &[u8], resume: bool) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| format!("CA certificate: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("no CA certificate found".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.resumption = if resume {
        Resumption::in_memory_sessions(RESUMPTION_CACHE)
    } else {
        Resumption::disabled()
    };
    Ok(Arc::new(cfg))
}

pub fn client_config_from_file(ca: &Path, resume: bool) -> Result<Arc<ClientConfig>, String> {
    let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
    client_config(&pem, resume).map_err(|e| format!("{}: {e}", ca.display()))
}
