//! The test zone of the authentication tests, with DKIM keys generated at test time.
//!
//! Clients connect from loopback addresses (127.0.0.x), so the SPF records, DNS lists
//! and PTR records below are about 127.0.0.0/24:
//!
//! | address | DNS lists |
//! |---|---|
//! | 127.0.0.10 | bl.test 127.0.0.2 (+TXT); s3cr3tkey.dqs.test 127.0.0.2 (+TXT: a zone with an access key); wl.test 127.0.0.255 (dnswl's "query refused") |
//! | 127.0.0.11 | bl.test 127.255.255.254 (error code) |
//! | 127.0.0.12 | bl.test 192.0.2.1 (outside 127/8) |
//! | 127.0.0.13 | bl.test + bl2.test |
//! | 127.0.0.14 | wl.test 127.0.15.1 (a trust answer); multi.test 127.0.0.6 (bits 0x02, 0x04) |
//! | 127.0.0.15 | multi.test 127.0.0.2 (bit 0x02 only) |
//!
//! DKIM keys under `signed.test`: `rsa` (2048 bits), `ed`, `short` (512 bits), `k1024`
//! (1024 bits), `big` (an 8192-bit-sized fake). DMARC: `signed`, `reject` (`p=reject`),
//! `lenient` (`p=none`, key `rsa`), `twice` and `subtwice` (two records each).
//!
//! hickory's resolver answers PTR queries for 127.0.0.0/8 itself (`localhost`, RFC
//! 6761), so reverse DNS is tested with 192.0.2.x addresses (library-level tests):
//! .10 `mail.pass.test` (FCrDNS pass), .11 `mismatch.test` (A elsewhere), .12 no PTR,
//! .13 `dyn-192-0-2-13.pool.test` (generic, pass), .14 a name under `timeout.test`.

use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use mail_auth::common::crypto::{Algorithm, Ed25519Key, RsaKey, Sha1, Sha256, SigningKey};
use mail_auth::common::headers::{HeaderWriter, Writable};
use mail_auth::dkim::{Canonicalization, DkimSigner};

use super::dns::{soa, txt};

pub struct Keys {
    pub rsa_pkcs1: Vec<u8>,
    pub rsa_public: Vec<u8>,
    pub ed_pkcs8: Vec<u8>,
    pub ed_public: Vec<u8>,
    /// The 2048-bit key's file, for openssl-made signatures (rsa-sha1).
    rsa_file: PathBuf,
    /// A 512-bit and a 1024-bit RSA key (ring signs with 2048 bits and up only, so
    /// openssl signs with these), and their public keys (SubjectPublicKeyInfo DER).
    rsa512_file: PathBuf,
    pub rsa512_public: Vec<u8>,
    rsa1024_file: PathBuf,
    pub rsa1024_public: Vec<u8>,
    _dir: tempfile::TempDir,
}

/// An RSA key in a file, signing through `openssl dgst` (PKCS#1 v1.5 with SHA-1 or
/// SHA-256, per `H`): the signatures mail-auth's own signer will not make.
pub struct OpensslKey<H> {
    file: PathBuf,
    _hash: PhantomData<H>,
}

impl<H> OpensslKey<H> {
    fn sign_with(&self, digest: &str, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        use std::io::Write as _;
        let mut data = Vec::new();
        input.write(&mut data);
        let mut child = std::process::Command::new("openssl")
            .args(["dgst", digest, "-keyform", "DER", "-sign"])
            .arg(&self.file)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("openssl dgst");
        child.stdin.take().unwrap().write_all(&data).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "openssl dgst -sign failed");
        Ok(out.stdout)
    }
}

impl SigningKey for OpensslKey<Sha1> {
    type Hasher = Sha1;
    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        self.sign_with("-sha1", input)
    }
    fn algorithm(&self) -> Algorithm {
        Algorithm::RsaSha1
    }
}

impl SigningKey for OpensslKey<Sha256> {
    type Hasher = Sha256;
    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        self.sign_with("-sha256", input)
    }
    fn algorithm(&self) -> Algorithm {
        Algorithm::RsaSha256
    }
}

/// A fresh RSA key of `bits` in `dir` (openssl's DER output is PKCS#1), and its public
/// key as SubjectPublicKeyInfo DER.
fn openssl_rsa(dir: &Path, bits: u32) -> (PathBuf, Vec<u8>) {
    let key = dir.join(format!("rsa{bits}.der"));
    let ok = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt"])
        .arg(format!("rsa_keygen_bits:{bits}"))
        .args(["-outform", "DER", "-out"])
        .arg(&key)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl")
        .success();
    assert!(ok, "openssl genpkey failed");
    let public = std::process::Command::new("openssl")
        .args([
            "pkey", "-inform", "DER", "-pubout", "-outform", "DER", "-in",
        ])
        .arg(&key)
        .output()
        .expect("openssl pkey");
    assert!(public.status.success());
    (key, public.stdout)
}

impl Keys {
    /// RSA keys of 2048, 1024 and 512 bits (openssl) and an Ed25519 key (ring), fresh
    /// per test run.
    pub fn generate() -> Keys {
        let dir = super::tempdir("mxg-keys.");
        let (rsa_file, rsa_public) = openssl_rsa(dir.path(), 2048);
        let (rsa512_file, rsa512_public) = openssl_rsa(dir.path(), 512);
        let (rsa1024_file, rsa1024_public) = openssl_rsa(dir.path(), 1024);
        let rng = ring::rand::SystemRandom::new();
        let ed = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let ed_pkcs8 = ed.as_ref().to_vec();
        let ed_public = Ed25519Key::from_pkcs8_der(&ed_pkcs8).unwrap().public_key();
        Keys {
            rsa_pkcs1: std::fs::read(&rsa_file).unwrap(),
            rsa_public,
            ed_pkcs8,
            ed_public,
            rsa_file,
            rsa512_file,
            rsa512_public,
            rsa1024_file,
            rsa1024_public,
            _dir: dir,
        }
    }

    /// Signs `msg` with the 2048-bit key as `d=domain s=rsa`, but with rsa-sha1: a real
    /// signature that RFC 8301 forbids verifiers to accept.
    pub fn sign_rsa_sha1(&self, msg: &[u8], domain: &str) -> Vec<u8> {
        let key = OpensslKey::<Sha1> {
            file: self.rsa_file.clone(),
            _hash: PhantomData,
        };
        let sig = DkimSigner::from_key(key)
            .domain(domain)
            .selector("rsa")
            .headers(["From", "To", "Subject", "Date"])
            .sign(msg)
            .unwrap();
        [sig.to_header().into_bytes(), msg.to_vec()].concat()
    }

    /// Signs `msg` (rsa-sha256) with the 512-bit key as `s=short`, or the 1024-bit one
    /// as `s=k1024`.
    pub fn sign_small_rsa(&self, msg: &[u8], domain: &str, bits: u32) -> Vec<u8> {
        let (file, selector) = match bits {
            512 => (&self.rsa512_file, "short"),
            1024 => (&self.rsa1024_file, "k1024"),
            _ => panic!("no {bits}-bit test key"),
        };
        let key = OpensslKey::<Sha256> {
            file: file.clone(),
            _hash: PhantomData,
        };
        let sig = DkimSigner::from_key(key)
            .domain(domain)
            .selector(selector)
            .headers(["From", "To", "Subject", "Date"])
            .sign(msg)
            .unwrap();
        [sig.to_header().into_bytes(), msg.to_vec()].concat()
    }

    /// Signs `msg` with the 2048-bit key (rsa-sha256, `s=rsa`) and a body length `l=`.
    pub fn sign_rsa_body_length(&self, msg: &[u8], domain: &str) -> Vec<u8> {
        let key = RsaKey::<Sha256>::from_key_der(rustls_pki_types::PrivateKeyDer::Pkcs1(
            self.rsa_pkcs1.clone().into(),
        ))
        .unwrap();
        let sig = DkimSigner::from_key(key)
            .domain(domain)
            .selector("rsa")
            .headers(["From", "To", "Subject", "Date"])
            .body_length(true)
            .sign(msg)
            .unwrap();
        [sig.to_header().into_bytes(), msg.to_vec()].concat()
    }

    /// Signs `msg` with the 2048-bit key (rsa-sha256, `s=rsa`) and `i=auid`.
    pub fn sign_rsa_auid(&self, msg: &[u8], domain: &str, auid: &str) -> Vec<u8> {
        let key = RsaKey::<Sha256>::from_key_der(rustls_pki_types::PrivateKeyDer::Pkcs1(
            self.rsa_pkcs1.clone().into(),
        ))
        .unwrap();
        let sig = DkimSigner::from_key(key)
            .domain(domain)
            .selector("rsa")
            .headers(["From", "To", "Subject", "Date"])
            .agent_user_identifier(auid)
            .sign(msg)
            .unwrap();
        [sig.to_header().into_bytes(), msg.to_vec()].concat()
    }

    /// Signs `msg` (CRLF) with the RSA key as `d=domain s=rsa`; returns the signed message.
    pub fn sign_rsa(&self, msg: &[u8], domain: &str, body: Canonicalization) -> Vec<u8> {
        let key = RsaKey::<Sha256>::from_key_der(rustls_pki_types::PrivateKeyDer::Pkcs1(
            self.rsa_pkcs1.clone().into(),
        ))
        .unwrap();
        let sig = DkimSigner::from_key(key)
            .domain(domain)
            .selector("rsa")
            .headers(["From", "To", "Subject", "Date"])
            .body_canonicalization(body)
            .sign(msg)
            .unwrap();
        [sig.to_header().into_bytes(), msg.to_vec()].concat()
    }

    pub fn sign_ed(&self, msg: &[u8], domain: &str) -> Vec<u8> {
        let key = Ed25519Key::from_pkcs8_der(&self.ed_pkcs8).unwrap();
        let sig = DkimSigner::from_key(key)
            .domain(domain)
            .selector("ed")
            .headers(["From", "To", "Subject", "Date"])
            .sign(msg)
            .unwrap();
        [sig.to_header().into_bytes(), msg.to_vec()].concat()
    }
}

/// A plain message (CRLF) from `from`, with `body`.
pub fn message(from: &str, subject: &str, body: &str) -> Vec<u8> {
    format!(
        "From: <{from}>\r\nTo: <rcpt@example.org>\r\nSubject: {subject}\r\nDate: Mon, 30 Nov 2026 00:00:00 +0000\r\nMessage-ID: <{subject}@test>\r\n\r\n{body}"
    )
    .into_bytes()
}

/// The zones: `test.` and `2.0.192.in-addr.arpa.`.
pub fn zones(keys: &Keys) -> Vec<(&'static str, String)> {
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let rsa = txt(&format!("v=DKIM1; k=rsa; p={}", b64(&keys.rsa_public)));
    let ed = txt(&format!("v=DKIM1; k=ed25519; p={}", b64(&keys.ed_public)));
    let short = txt(&format!("v=DKIM1; k=rsa; p={}", b64(&keys.rsa512_public)));
    let k1024 = txt(&format!("v=DKIM1; k=rsa; p={}", b64(&keys.rsa1024_public)));
    // An 8192-bit-sized RSA key (not a real key: it must never be parsed).
    let big = txt(&format!("v=DKIM1; k=rsa; p={}", "A".repeat(1420)));
    let mut t = soa("test.");
    let many_a: Vec<String> = (1..=11).map(|i| format!("a:a{i}.test")).collect();
    t.push_str(&format!(
        r#"
pass            TXT "v=spf1 ip4:127.0.0.0/24 -all"
fail            TXT "v=spf1 ip4:192.0.2.1 -all"
soft            TXT "v=spf1 ~all"
neutral         TXT "v=spf1 ?all"
nospf           A   192.0.2.1
perm            TXT "v=spf1 include:nospf.test ip4:127.0.0.0/24 -all"
perm2           TXT "v=spf1 redirect=nospf.test"
slow            TXT "v=spf1 include:spf.timeout.test -all"
lookups10       TXT "v=spf1 {} ip4:127.0.0.0/24 -all"
void2           TXT "v=spf1 a:v1.test a:v2.test ip4:127.0.0.0/24 -all"
void3           TXT "v=spf1 a:v1.test a:v2.test a:v3.test ip4:127.0.0.0/24 -all"
helo            TXT "v=spf1 a -all"
helo            A   127.0.0.10
mail.pass       A   192.0.2.10
mismatch        A   192.0.2.9
dyn-192-0-2-13.pool A 192.0.2.13
signed          TXT "v=spf1 ip4:127.0.0.0/24 -all"
rsa._domainkey.signed TXT {rsa}
ed._domainkey.signed  TXT {ed}
big._domainkey.signed TXT {big}
short._domainkey.signed TXT {short}
k1024._domainkey.signed TXT {k1024}
_dmarc.signed   TXT "v=DMARC1; p=reject"
rsa._domainkey.lenient TXT {rsa}
short._domainkey.lenient TXT {short}
_dmarc.lenient  TXT "v=DMARC1; p=none"
_dmarc.twice    TXT "v=DMARC1; p=reject"
_dmarc.twice    TXT "v=DMARC1; p=none"
_dmarc.subtwice TXT "v=DMARC1; p=none; sp=reject"
_dmarc.subtwice TXT "v=DMARC1; p=reject"
rsa._domainkey.other TXT {rsa}
other           TXT "v=spf1 ip4:127.0.0.0/24 -all"
_dmarc.reject   TXT "v=DMARC1; p=reject"
_dmarc.quarantine TXT "v=DMARC1; p=quarantine"
_dmarc.testing  TXT "v=DMARC1; p=reject; t=y"
_dmarc.sampled  TXT "v=DMARC1; p=reject; pct=0"
_dmarc.fullpct  TXT "v=DMARC1; p=reject; pct=100"
10.0.0.127.bl   A   127.0.0.2
10.0.0.127.bl   TXT "Listed: see https://bl.test/127.0.0.10"
11.0.0.127.bl   A   127.255.255.254
12.0.0.127.bl   A   192.0.2.1
13.0.0.127.bl   A   127.0.0.3
13.0.0.127.bl2  A   127.0.0.4
10.0.0.127.s3cr3tkey.dqs A 127.0.0.2
10.0.0.127.s3cr3tkey.dqs TXT "Listed by the DQS test list"
10.0.0.127.wl   A   127.0.0.255
14.0.0.127.wl   A   127.0.15.1
14.0.0.127.multi A  127.0.0.6
15.0.0.127.multi A  127.0.0.2
"#,
        many_a.join(" ")
    ));
    for i in 1..=11 {
        t.push_str(&format!("a{i} A 192.0.2.{i}\n"));
    }
    let mut r = soa("2.0.192.in-addr.arpa.");
    r.push_str(
        r#"
10 PTR mail.pass.test.
11 PTR mismatch.test.
13 PTR dyn-192-0-2-13.pool.test.
14 PTR host.timeout.test.
"#,
    );
    vec![("test.", t), ("2.0.192.in-addr.arpa.", r)]
}
