//! Test certificates, made at run time with rcgen (no key is ever committed), and the TLS
//! and token options that the socket roles take.
//!
//! [`TestPki::generate`] writes into an owner-only temporary directory:
//!
//! | file | what |
//! |---|---|
//! | `ca.pem` | the test CA |
//! | `server.pem` / `server.key` | a server certificate for `localhost` and `127.0.0.1`, signed by the CA |
//! | `client.pem` / `client.key` | a client certificate (`CN=alice`, `DNS:alice.example`), signed by the CA |
//! | `expired.pem` / `expired.key` | a server certificate for `localhost`/`127.0.0.1` that expired in 2001 |
//! | `wrong-host.pem` / `wrong-host.key` | a server certificate for `elsewhere.example` only |
//! | `self-signed.pem` / `self-signed.key` / `self-signed.der` | a self-signed server certificate for `localhost`/`127.0.0.1` |
//! | `other-ca.pem` | a second CA that nobody trusts |
//! | `other-server.pem` / `.key`, `other-client.pem` / `.key` | certificates signed by the other CA |
//! | `expired-client.pem` / `.key` | an expired client certificate signed by the test CA |
//!
//! Role options (see [`apply`]): `--tls-cert F --tls-key F [--tls-client-ca F]` on a
//! server, `--tls-ca F | --tls-pin F.der [--tls-client-cert F --tls-client-key F]` on a
//! client, `--tokens-file F` (one token per line) on a server, `--token-file F` on a client,
//! `--insecure-public-bind true` on a server, `--handshake-timeout-ms MS` on either.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ipc_socket::{ConnectionConfig, TlsClientConfig, TlsServerConfig, Token};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::TempDir;
use crate::roles::Args;

/// A directory of test certificates; removed on drop.
#[derive(Debug)]
pub struct TestPki {
    dir: TempDir,
}

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn make_ca(name: &str) -> Result<Ca> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    })
}

#[derive(Clone, Copy)]
enum Use {
    Server,
    Client,
}

fn leaf_params(common_name: &str, names: &[&str], usage: Use) -> Result<CertificateParams> {
    let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
    let mut params = CertificateParams::new(names)?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![match usage {
        Use::Server => ExtendedKeyUsagePurpose::ServerAuth,
        Use::Client => ExtendedKeyUsagePurpose::ClientAuth,
    }];
    Ok(params)
}

const LOCAL: &[&str] = &["localhost", "127.0.0.1"];

impl TestPki {
    /// Generates every certificate listed in the module docs.
    pub fn generate() -> Result<TestPki> {
        let pki = TestPki {
            dir: TempDir::new("pki")?,
        };
        let ca = make_ca("ipc test ca")?;
        let other = make_ca("ipc other ca")?;
        pki.write("ca.pem", &ca.pem)?;
        pki.write("other-ca.pem", &other.pem)?;

        let signed = |issuer: &Issuer<'static, KeyPair>,
                      name: &str,
                      params: CertificateParams|
         -> Result<()> {
            let key = KeyPair::generate()?;
            let cert = params.signed_by(&key, issuer)?;
            pki.write(&format!("{name}.pem"), &cert.pem())?;
            pki.write(&format!("{name}.key"), &key.serialize_pem())?;
            Ok(())
        };
        signed(
            &ca.issuer,
            "server",
            leaf_params("ipc test server", LOCAL, Use::Server)?,
        )?;
        signed(
            &ca.issuer,
            "client",
            leaf_params("alice", &["alice.example"], Use::Client)?,
        )?;
        let mut expired = leaf_params("ipc expired server", LOCAL, Use::Server)?;
        expired.not_before = rcgen::date_time_ymd(2000, 1, 1);
        expired.not_after = rcgen::date_time_ymd(2001, 1, 1);
        signed(&ca.issuer, "expired", expired)?;
        let mut expired_client = leaf_params("mallory", &["mallory.example"], Use::Client)?;
        expired_client.not_before = rcgen::date_time_ymd(2000, 1, 1);
        expired_client.not_after = rcgen::date_time_ymd(2001, 1, 1);
        signed(&ca.issuer, "expired-client", expired_client)?;
        signed(
            &ca.issuer,
            "wrong-host",
            leaf_params("ipc elsewhere", &["elsewhere.example"], Use::Server)?,
        )?;
        signed(
            &other.issuer,
            "other-server",
            leaf_params("ipc other server", LOCAL, Use::Server)?,
        )?;
        signed(
            &other.issuer,
            "other-client",
            leaf_params("eve", &["eve.example"], Use::Client)?,
        )?;

        let params = leaf_params("ipc self-signed server", LOCAL, Use::Server)?;
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        pki.write("self-signed.pem", &cert.pem())?;
        pki.write("self-signed.key", &key.serialize_pem())?;
        std::fs::write(pki.path("self-signed.der"), cert.der().as_ref())
            .context("write self-signed.der")?;
        Ok(pki)
    }

    fn write(&self, name: &str, text: &str) -> Result<()> {
        std::fs::write(self.path(name), text).with_context(|| format!("write {name}"))
    }

    /// The path of one of the files.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The path as text, for a peer's arguments.
    pub fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// The contents of one of the files.
    pub fn read(&self, name: &str) -> Result<Vec<u8>> {
        std::fs::read(self.path(name)).with_context(|| format!("read {name}"))
    }

    /// Server options for the `socket-server` role: certificate `name`.pem/.key.
    pub fn server_args(&self, name: &str) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.arg(&format!("{name}.pem")),
            "--tls-key".into(),
            self.arg(&format!("{name}.key")),
        ]
    }

    /// The directory the files are in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn read(path: &str) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("read {path}"))
}

/// Adds the TLS and token options of a role's arguments (see the module docs) to `config`.
pub fn apply(args: &Args, mut config: ConnectionConfig) -> Result<ConnectionConfig> {
    let cert = args.text("tls-cert", "");
    if !cert.is_empty() {
        let key = args.text("tls-key", "");
        let mut tls = TlsServerConfig::from_pem(&read(&cert)?, &read(&key)?)?;
        let client_ca = args.text("tls-client-ca", "");
        if !client_ca.is_empty() {
            tls = tls.require_client_certificates(&read(&client_ca)?)?;
        }
        config = config.with_tls_server(tls);
    }
    let ca = args.text("tls-ca", "");
    let pin = args.text("tls-pin", "");
    let client_cert = args.text("tls-client-cert", "");
    if !ca.is_empty() || !pin.is_empty() || !client_cert.is_empty() {
        let mut tls = if !pin.is_empty() {
            TlsClientConfig::danger_pin_certificate(read(&pin)?)
        } else if !ca.is_empty() {
            TlsClientConfig::with_ca_pem(&read(&ca)?)?
        } else {
            TlsClientConfig::platform_roots()
        };
        if !client_cert.is_empty() {
            let key = args.text("tls-client-key", "");
            tls = tls.with_client_certificate(&read(&client_cert)?, &read(&key)?)?;
        }
        config = config.with_tls_client(tls);
    }
    let tokens = args.text("tokens-file", "");
    if !tokens.is_empty() {
        let text = String::from_utf8(read(&tokens)?).context("tokens file is not utf-8")?;
        let tokens = text
            .lines()
            .filter(|line| !line.is_empty())
            .map(Token::new)
            .collect::<ipc_core::Result<Vec<_>>>()?;
        config = config.with_accepted_tokens(tokens);
    }
    let token = args.text("token-file", "");
    if !token.is_empty() {
        let text = read(&token)?;
        let text = text.strip_suffix(b"\n").unwrap_or(&text);
        config = config.with_token(Token::new(text)?);
    }
    let handshake_ms: u64 = args.get("handshake-timeout-ms", 0)?;
    if handshake_ms != 0 {
        config = config.with_handshake_timeout(std::time::Duration::from_millis(handshake_ms));
    }
    if args.get("insecure-public-bind", false)? {
        config = config.with_insecure_public_bind();
    }
    Ok(config)
}
