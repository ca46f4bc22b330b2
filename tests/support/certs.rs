//! Test TLS certificates: a CA and a leaf for `mx.test`, `localhost` and `127.0.0.1`,
//! written as PEM files to a temp directory.

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

pub struct TestCerts {
    pub dir: PathBuf,
    pub ca_cert: PathBuf,
    pub leaf_cert: PathBuf,
    /// Leaf then CA, the order servers want.
    pub leaf_chain: PathBuf,
    pub leaf_key: PathBuf,
    pub ca_pem: String,
    _tmp: tempfile::TempDir,
}

impl TestCerts {
    pub fn generate() -> TestCerts {
        let tmp = super::tempdir("mxg-certs.");
        let dir = tmp.path().to_path_buf();

        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "mxguard Test Mail CA");
        ca_params.distinguished_name = dn;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf_key = KeyPair::generate().expect("leaf key");
        let mut leaf_params = CertificateParams::new(vec![
            "mx.test".to_string(),
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ])
        .unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "mx.test");
        leaf_params.distinguished_name = dn;
        leaf_params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        leaf_params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        leaf_params.use_authority_key_identifier_extension = true;
        let leaf_cert = leaf_params
            .signed_by(&leaf_key, &issuer)
            .expect("leaf cert");

        let ca_pem = ca_cert.pem();
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let ca_path = write("ca.crt", &ca_pem);
        let leaf_path = write("leaf.crt", &leaf_cert.pem());
        let chain = write("leaf-chain.crt", &format!("{}{}", leaf_cert.pem(), ca_pem));
        let key = write("leaf.key", &leaf_key.serialize_pem());
        TestCerts {
            dir,
            ca_cert: ca_path,
            leaf_cert: leaf_path,
            leaf_chain: chain,
            leaf_key: key,
            ca_pem,
            _tmp: tmp,
        }
    }

    /// A rustls client config that trusts only the test CA.
    pub fn rustls_client_config(&self) -> std::sync::Arc<rustls::ClientConfig> {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(c.expect("ca pem")).expect("add ca");
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        std::sync::Arc::new(cfg)
    }
}
