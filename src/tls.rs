//! TLS configuration for both sides: the certificate we present to clients (STARTTLS or
//! implicit TLS) and the client configuration we use towards upstreams.
//!
//! One crypto provider (ring) is named explicitly everywhere, so a second provider
//! compiled in by some dependency can never make `ServerConfig::builder()` panic. The
//! server certificate sits behind an [`ArcSwap`] so SIGHUP can replace it without
//! touching sessions in flight; a bad new certificate keeps the old one.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::config::TlsFiles;

/// The process's one crypto provider.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A server certificate that can be replaced while running.
pub struct ReloadableCert {
    current: ArcSwap<CertifiedKey>,
}

impl fmt::Debug for ReloadableCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReloadableCert")
    }
}

impl ReloadableCert {
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        Ok(ReloadableCert {
            current: ArcSwap::from_pointee(load_certified_key(files)?),
        })
    }

    /// Replaces the certificate; on error the old one stays and the error is returned.
    pub fn reload(&self, files: &TlsFiles) -> Result<(), TlsError> {
        let key = load_certified_key(files)?;
        self.current.store(Arc::new(key));
        Ok(())
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn load_certified_key(files: &TlsFiles) -> Result<CertifiedKey, TlsError> {
    let file_err = |path: &Path, e: &dyn fmt::Display| TlsError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| file_err(&files.cert, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(&files.cert, &e))?;
    if certs.is_empty() {
        return Err(file_err(&files.cert, &"no certificate found"));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| file_err(&files.key, &e))?;
    let signing_key = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| file_err(&files.key, &e))?;
    let ck = CertifiedKey::new(certs, signing_key);
    ck.keys_match().map_err(|e| TlsError::File {
        path: files.key.display().to_string(),
        message: format!(
            "key does not match certificate {}: {e}",
            files.cert.display()
        ),
    })?;
    Ok(ck)
}

/// A rustls server configuration using the reloadable certificate.
pub fn server_config(cert: Arc<ReloadableCert>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    // Our cipher order (strongest first), not the client's: a client that lists a weak
    // suite first does not get it (testssl.sh: "server cipher order").
    cfg.ignore_client_order = true;
    Ok(Arc::new(cfg))
}

/// The client configuration for one upstream: verify against `ca_file` (or the system
/// bundle), or accept any certificate when verification is off (opportunistic TLS, as
/// Postfix's `smtp_tls_security_level = may`).
pub fn upstream_client_config(
    verify: bool,
    ca_file: Option<&Path>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder =
        ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let cfg = if verify {
        let path = ca_file.unwrap_or(Path::new("/etc/ssl/certs/ca-certificates.crt"));
        let mut roots = RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(path).map_err(|e| TlsError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        for cert in certs.flatten() {
            let _ = roots.add(cert);
        }
        if roots.is_empty() {
            return Err(TlsError::File {
                path: path.display().to_string(),
                message: "no CA certificate found".into(),
            });
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider())))
            .with_no_client_auth()
    };
    Ok(Arc::new(cfg))
}

/// Encryption without authentication, for upstreams configured with `tls_verify: false`.
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
