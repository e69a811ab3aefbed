//! TLS for clients (issue 13, item 4): nodes with `--tls-cert`/`--tls-key` (and `--tls-ca` for
//! client certificates), reached by `redis-cli --tls`, the `chordkv` command and the binary
//! client. Certificates are made by the test with rcgen: a CA, a node certificate for
//! 127.0.0.1, a client certificate.

use std::path::{Path, PathBuf};
use std::process::Command;

use chordkv_client::{Access, Client, ClientError, TlsClient};
use chordkv_harness::cluster::LocalCluster;
use chordkv_server::keyring::generate_key;
use chordkv_tests::*;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair, SanType,
};

/// PEM files in `dir`: ca.pem; node.pem and node.key (for 127.0.0.1); client.pem and
/// client.key (signed by the same CA).
fn make_certificates(dir: &Path) {
    let dn_of = |cn: &str| {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        dn
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name = dn_of("chordkv test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    for (name, sans) in [
        ("node", vec!["localhost".to_string()]),
        ("client", vec!["client".to_string()]),
    ] {
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name = dn_of(name);
        if name == "node" {
            params
                .subject_alt_names
                .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }
}

fn path(dir: &Path, file: &str) -> String {
    dir.join(file).to_str().expect("UTF-8 path").to_string()
}

/// A 2-node ring with a keyring whose clients must use TLS; `client_certs`: they must also
/// show a certificate of the CA.
fn tls_ring(name: &str, client_certs: bool) -> (LocalCluster, PathBuf) {
    let spec = cluster_spec(name, 2);
    let dir = spec.log_dir.clone().expect("a log directory");
    make_certificates(&dir);
    std::fs::write(dir.join("ring.key"), generate_key()).unwrap();
    let mut args = vec![
        "--tls-cert".to_string(),
        path(&dir, "node.pem"),
        "--tls-key".into(),
        path(&dir, "node.key"),
        "--keyring".into(),
        path(&dir, "ring.key"),
    ];
    if client_certs {
        args.extend(["--tls-ca".to_string(), path(&dir, "ca.pem")]);
    }
    let mut spec = with_args(spec, &args.iter().map(String::as_str).collect::<Vec<_>>());
    spec.resp = true;
    let identity = client_certs.then(|| (dir.join("client.pem"), dir.join("client.key")));
    spec.access.tls = Some(
        TlsClient::from_files(
            &dir.join("ca.pem"),
            identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
            None,
        )
        .unwrap(),
    );
    (start_spec(name, spec), dir)
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli (tests/run-all.sh installs it)");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

#[test]
fn clients_reach_the_ring_over_tls_and_only_over_tls() {
    let _one = one_at_a_time();
    let (cluster, dir) = tls_ring("tls", false);
    let ca = path(&dir, "ca.pem");
    let port = cluster.resp_addr(0).expect("a RESP port").port();

    // redis-cli --tls writes through node 0 and reads through node 1.
    assert_eq!(
        redis_cli(port, &["--tls", "--cacert", &ca, "set", "k", "over-tls"]),
        "OK"
    );
    let port1 = cluster.resp_addr(1).expect("a RESP port").port();
    assert_eq!(
        redis_cli(port1, &["--tls", "--cacert", &ca, "get", "k"]),
        "over-tls"
    );
    // Without TLS the RESP port answers nothing a client can read as a reply.
    assert_ne!(redis_cli(port, &["get", "k"]), "over-tls");

    // The binary port: the chordkv command with --tls; a plain client is told why not.
    let node = cluster.addr(1).to_string();
    let run = chordkv(&["get", "k", "--node", &node, "--tls", "--tls-ca", &ca]);
    assert_eq!(run.stdout.trim(), "over-tls", "{}", run.stderr);
    let run = chordkv(&["get", "k", "--node", &node]);
    assert_eq!(run.code(), Some(1));
    assert!(
        run.stderr.contains("serves clients over TLS only"),
        "{}",
        run.stderr
    );
    // redis-py with ssl=True, as an application would connect.
    let script = format!(
        "import redis\n\
         r = redis.Redis(host='127.0.0.1', port={port}, ssl=True, ssl_ca_certs='{ca}')\n\
         r.set('py', 'tls-from-python')\n\
         print(r.get('py').decode())\n"
    );
    // Debian's Python, where tests/run-all.sh installs python3-redis.
    let python = if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let out = Command::new(python)
        .args(["-c", &script])
        .output()
        .expect("python3 with redis (tests/run-all.sh installs python3-redis)");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "tls-from-python",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A client that does not trust the node's CA refuses it.
    let other = scratch_dir("tls-other-ca");
    make_certificates(&other);
    let run = chordkv(&[
        "get",
        "k",
        "--node",
        &node,
        "--tls",
        "--tls-ca",
        &path(&other, "ca.pem"),
    ]);
    assert_eq!(run.code(), Some(1));
    assert!(
        run.stderr.to_lowercase().contains("certificate"),
        "{}",
        run.stderr
    );
}

#[test]
fn client_certificates_are_required_with_tls_ca() {
    let _one = one_at_a_time();
    let (cluster, dir) = tls_ring("mtls", true);
    let addr = cluster.addr(0);
    let without = Access {
        login: None,
        tls: Some(TlsClient::from_files(&dir.join("ca.pem"), None, None).unwrap()),
    };
    let refused = Client::connect_as(addr, REQUEST_TIMEOUT, &without).and_then(|mut c| c.get("k"));
    assert!(
        matches!(
            refused,
            Err(ClientError::Io { .. }) | Err(ClientError::Connect { .. })
        ),
        "a client without a certificate: {refused:?}"
    );
    let with = Access {
        login: None,
        tls: Some(
            TlsClient::from_files(
                &dir.join("ca.pem"),
                Some((&dir.join("client.pem"), &dir.join("client.key"))),
                None,
            )
            .unwrap(),
        ),
    };
    let mut client = Client::connect_as(addr, REQUEST_TIMEOUT, &with).unwrap();
    client.put("k", "mutual").unwrap();
    assert_eq!(client.get("k").unwrap().value.as_deref(), Some(&b"mutual"[..]));
    let port = cluster.resp_addr(1).expect("a RESP port").port();
    let got = redis_cli(
        port,
        &[
            "--tls",
            "--cacert",
            &path(&dir, "ca.pem"),
            "--cert",
            &path(&dir, "client.pem"),
            "--key",
            &path(&dir, "client.key"),
            "get",
            "k",
        ],
    );
    assert_eq!(got, "mutual");
}
