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

/// A second RabbitMQ node with only a TLS listener (mutual TLS: `verify_peer` and
/// `fail_if_no_peer_cert`), started for one test on its own ports and directories, with the
/// certificates of a [`TestPki`]. The default broker (5672) is not touched. Stopped with
/// `rabbitmqctl -n NODE stop` on drop (also when the test failed), then killed if need be.
#[derive(Debug)]
pub struct TlsBroker {
    node: String,
    port: u16,
    server: Option<std::process::Child>,
    dir: TempDir,
}

fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// The uid and gid of the `rabbitmq` user, when this process is root (Debian's
/// `rabbitmq-server` then runs the node as that user, which must own the node's files).
#[cfg(unix)]
fn rabbitmq_owner() -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt as _;
    if std::fs::metadata("/proc/self").ok()?.uid() != 0 {
        return None;
    }
    let id = |flag: &str| -> Option<u32> {
        let out = std::process::Command::new("id")
            .args([flag, "rabbitmq"])
            .output()
            .ok()?;
        String::from_utf8(out.stdout).ok()?.trim().parse().ok()
    };
    Some((id("-u")?, id("-g")?))
}

impl TlsBroker {
    /// Starts the node and waits until it runs; `Ok(None)` when `rabbitmq-server` is not
    /// installed. How long the start took is printed (about 10 s on the 2-core test machine).
    pub fn start(pki: &TestPki) -> Result<Option<TlsBroker>> {
        let installed = std::process::Command::new("rabbitmqctl")
            .arg("version")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !installed {
            return Ok(None);
        }
        let dir = TempDir::new("rabbit-tls")?;
        let port = free_port()?;
        let dist_port = free_port()?;
        let node = format!("ipc-tls-{}-{port}@localhost", std::process::id());
        let root = dir.path().to_path_buf();
        let path = |name: &str| root.join(name);
        for name in ["ca.pem", "server.pem", "server.key"] {
            std::fs::copy(pki.path(name), path(name)).with_context(|| format!("copy {name}"))?;
        }
        let config = format!(
            "listeners.tcp = none\n\
             listeners.ssl.default = 127.0.0.1:{port}\n\
             ssl_options.cacertfile = {ca}\n\
             ssl_options.certfile = {cert}\n\
             ssl_options.keyfile = {key}\n\
             ssl_options.verify = verify_peer\n\
             ssl_options.fail_if_no_peer_cert = true\n",
            ca = path("ca.pem").display(),
            cert = path("server.pem").display(),
            key = path("server.key").display(),
        );
        std::fs::write(path("rabbitmq.conf"), config)?;
        // Our own env file: the system one names the default node.
        std::fs::write(path("rabbitmq-env.conf"), "ERL_EPMD_ADDRESS=127.0.0.1\n")?;
        std::fs::write(path("enabled_plugins"), "[].\n")?;
        #[cfg(unix)]
        if let Some((uid, gid)) = rabbitmq_owner() {
            for entry in std::fs::read_dir(dir.path())? {
                std::os::unix::fs::chown(entry?.path(), Some(uid), Some(gid))?;
            }
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))?;
        }
        let started = std::time::Instant::now();
        let log = std::fs::File::create(path("server.out"))?;
        let server = std::process::Command::new("rabbitmq-server")
            .current_dir(dir.path())
            .env("RABBITMQ_CONF_ENV_FILE", path("rabbitmq-env.conf"))
            .env("RABBITMQ_NODENAME", &node)
            .env("RABBITMQ_CONFIG_FILE", path("rabbitmq.conf"))
            .env("RABBITMQ_MNESIA_BASE", path("mnesia"))
            .env("RABBITMQ_LOG_BASE", path("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", path("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", path("pid"))
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("RABBITMQ_NODE_PORT", free_port()?.to_string())
            .env("ERL_FLAGS", "-kernel inet_dist_use_interface {127,0,0,1}")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn rabbitmq-server")?;
        let broker = TlsBroker {
            node,
            port,
            server: Some(server),
            dir,
        };
        let waited = std::process::Command::new("rabbitmqctl")
            .args(["-n", &broker.node, "wait"])
            .arg(path("pid"))
            .args(["--timeout", "90"])
            .stdout(std::process::Stdio::null())
            .status()
            .context("rabbitmqctl wait")?;
        if !waited.success() {
            let out = std::fs::read_to_string(path("server.out")).unwrap_or_default();
            let tail: Vec<&str> = out.lines().rev().take(20).collect();
            anyhow::bail!(
                "the tls node {} did not start: {}",
                broker.node,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        println!(
            "tls broker node {} up on port {port} after {:.1} s",
            broker.node,
            started.elapsed().as_secs_f64()
        );
        Ok(Some(broker))
    }

    /// `amqps://guest:guest@localhost:PORT/%2f`, with a queue name after `#`.
    pub fn url(&self, queue: &str) -> String {
        format!("amqps://guest:guest@localhost:{}/%2f#{queue}", self.port)
    }

    /// The node's files (certificates, config, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["-n", &self.node, "stop"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        if let Some(mut server) = self.server.take() {
            // `stop` returns once the node is down; the wrapper script exits with it.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            loop {
                match server.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if std::time::Instant::now() > deadline => {
                        let _ = server.kill();
                        let _ = server.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(std::time::Duration::from_millis(50)),
                }
            }
        }
    }
}
