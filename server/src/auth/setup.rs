//! Building the [`Authority`] from the configuration, and what development mode creates so
//! that the first run needs no configuration.
//!
//! Development mode, with no token secret configured, keeps a random one in
//! `<database dir>/dev-token-secret`; with no key named `dev`, it creates an admin key and
//! keeps it in `<database dir>/dev-api-key` (mode 0600), and prints it with a curl line on
//! every start. Production mode refuses to start without a secret or public key, with the
//! development secret, or while a development key is active.

use super::keys::{random_base62, Keys};
use super::scope::{Grants, Pattern};
use super::token::{TokenAlgorithm, Tokens};
use super::Authority;
use crate::config::{Config, Mode, StoreKind};
use anyhow::{bail, Context as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const DEV_SECRET_FILE: &str = "dev-token-secret";
const DEV_KEY_FILE: &str = "dev-api-key";
const DEV_KEY_NAME: &str = "dev";

/// Whether the database is `:memory:` (keys live in the process only; nothing to watch).
pub fn in_memory(db: &Path) -> bool {
    db == Path::new(":memory:")
}

fn beside(db: &Path, name: &str) -> PathBuf {
    db.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join(name)
}

/// Writes `contents` readable by the owner only.
fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// The verifier the configuration asks for; in development mode, the development secret.
fn tokens(config: &Config) -> anyhow::Result<Tokens> {
    let (aud, iss, leeway) = (
        config.token_audience.clone(),
        config.token_issuer.clone(),
        config.token_leeway_secs,
    );
    let dev_secret_path = beside(&config.db, DEV_SECRET_FILE);
    match (&config.token_secret, &config.token_public_key) {
        (Some(_), Some(_)) => bail!("give --token-secret or --token-public-key, not both"),
        (Some(secret), None) => {
            if config.token_algorithm != TokenAlgorithm::Hs256 {
                bail!("--token-secret signs HS256; RS256 and ES256 take --token-public-key");
            }
            if config.mode == Mode::Production
                && read_trimmed(&dev_secret_path).as_deref() == Some(secret.as_str())
            {
                bail!("production mode refuses the development token secret");
            }
            Tokens::hs256(secret.as_bytes(), aud, iss, leeway).map_err(anyhow::Error::msg)
        }
        (None, Some(path)) => {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading the token public key {}", path.display()))?;
            Tokens::public_key(config.token_algorithm, &pem, aud, iss, leeway)
                .map_err(anyhow::Error::msg)
        }
        (None, None) if config.mode == Mode::Production => bail!(
            "production mode needs --token-secret (HERALD_TOKEN_SECRET) or --token-public-key"
        ),
        (None, None) => {
            let secret = if in_memory(&config.db) {
                random_base62(48)?
            } else if let Some(s) = read_trimmed(&dev_secret_path) {
                s
            } else {
                let s = random_base62(48)?;
                write_private(&dev_secret_path, &s)?;
                s
            };
            Tokens::hs256(secret.as_bytes(), aud, iss, leeway).map_err(anyhow::Error::msg)
        }
    }
}

/// The key table the configuration names (the server's and `herald keys`'), with an error
/// that says where it was looked for.
pub fn open_keys(config: &Config) -> anyhow::Result<Keys> {
    Keys::for_config(config).with_context(|| match config.store {
        StoreKind::Redis => format!("reading the API keys in redis ({})", config.redis_url),
        _ => format!("opening the key table in {}", config.db.display()),
    })
}

/// Builds the authority: keys from the database, the token verifier, the public topics.
/// In development mode, also makes sure there is a development key and prints it.
pub fn authority(config: &Config, addr: SocketAddr) -> anyhow::Result<Authority> {
    let keys = Arc::new(open_keys(config)?);
    let tokens = tokens(config)?;
    let public = Pattern::parse_list(&config.public_topics).map_err(anyhow::Error::msg)?;
    match config.mode {
        Mode::Production => {
            if let Some(dev) = keys.list().into_iter().find(|k| k.dev && k.active()) {
                bail!(
                    "production mode refuses to start while the development key {} is active: \
                     revoke it with `herald keys revoke {}`",
                    dev.id,
                    dev.id
                );
            }
        }
        Mode::Dev if !in_memory(&config.db) => dev_key(config, &keys, addr)?,
        Mode::Dev => {}
    }
    Ok(Authority {
        keys,
        tokens,
        public,
        allow_anonymous: config.anonymous,
    })
}

/// Makes sure a development admin key exists and prints it.
fn dev_key(config: &Config, keys: &Keys, addr: SocketAddr) -> anyhow::Result<()> {
    let path = beside(&config.db, DEV_KEY_FILE);
    // The key in this host's file, read and checked once.
    let in_file = read_trimmed(&path).and_then(|k| keys.verify(&k).ok().map(|rec| (k, rec)));
    // A key from before inboxes existed cannot reach people: replaced like a lost one.
    let known = in_file
        .as_ref()
        .filter(|(_, rec)| rec.grants.allows(super::Action::Publish, "@anyone"))
        .map(|(k, _)| k.clone());
    let key = match known {
        Some(k) => k,
        None => {
            // The development keys this host no longer has the text of. In Redis, other
            // hosts' development keys are theirs: only the one in this host's file goes.
            let stale: Vec<String> = match config.store {
                StoreKind::Redis => in_file
                    .into_iter()
                    .filter(|(_, rec)| rec.dev)
                    .map(|(_, rec)| rec.id.clone())
                    .collect(),
                _ => keys
                    .list()
                    .into_iter()
                    .filter(|k| k.dev && k.active())
                    .map(|k| k.id)
                    .collect(),
            };
            for id in stale {
                keys.revoke(&id)?;
            }
            let grants =
                Grants::from_scopes(&["admin:*", "admin:@*"]).map_err(anyhow::Error::msg)?;
            let (_, key) = keys.add(DEV_KEY_NAME, grants, true)?;
            write_private(&path, &key)?;
            key
        }
    };
    // Printed, not logged: the one place a key is shown, and only in development mode.
    println!(
        "\nHerald is in development mode. An admin API key for this machine (kept in {}):\n\n  \
         {key}\n\nPublish with it:\n\n  curl -H \"Authorization: Bearer {key}\" -d \"Deploy finished\" \
         http://{addr}/api/topics/general\n\nThe page at http://{addr}/ offers a sign-in that picks a user name. \
         Production: --mode production with --token-secret (see README).\n",
        path.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, mode: Mode) -> Config {
        Config {
            mode,
            db: dir.join("herald.db"),
            token_secret: None,
            ..Config::default()
        }
    }

    fn addr() -> SocketAddr {
        "127.0.0.1:3000".parse().unwrap()
    }

    #[test]
    fn dev_mode_creates_credentials_once_and_production_refuses_them() {
        let dir = tempfile::tempdir().unwrap();
        let dev = config(dir.path(), Mode::Dev);
        let a = authority(&dev, addr()).unwrap();
        let key = std::fs::read_to_string(dir.path().join(DEV_KEY_FILE)).unwrap();
        assert!(a.keys.verify(&key).unwrap().grants.is_admin());
        let secret = std::fs::read_to_string(dir.path().join(DEV_SECRET_FILE)).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join(DEV_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "the key file is private");
        }
        // A second start reuses both.
        let again = authority(&dev, addr()).unwrap();
        assert_eq!(again.keys.list().len(), 1);
        assert_eq!(
            std::fs::read_to_string(dir.path().join(DEV_KEY_FILE)).unwrap(),
            key
        );

        // Production: no secret, the dev secret, or an active dev key: refused.
        let mut prod = config(dir.path(), Mode::Production);
        let err = authority(&prod, addr()).err().unwrap().to_string();
        assert!(err.contains("needs --token-secret"), "{err}");
        prod.token_secret = Some(secret.clone());
        let err = authority(&prod, addr()).err().unwrap().to_string();
        assert!(err.contains("development token secret"), "{err}");
        prod.token_secret = Some("a-real-production-secret-of-enough-bytes".into());
        let err = authority(&prod, addr()).err().unwrap().to_string();
        assert!(err.contains("development key"), "{err}");
        let id = a.keys.verify(&key).unwrap().id.clone();
        a.keys.revoke(&id).unwrap();
        assert!(authority(&prod, addr()).is_ok());
        prod.token_secret = Some("short".into());
        assert!(authority(&prod, addr()).is_err());
    }

    #[test]
    fn in_redis_hosts_in_dev_mode_keep_their_own_development_keys() {
        let redis = crate::store::redis::testing::RedisServer::start()
            .expect("redis-server (scripts/setup.sh installs it)");
        let prefix = crate::store::redis::unique_prefix();
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let on_redis = |dir: &Path| Config {
            store: StoreKind::Redis,
            redis_url: redis.url(),
            redis_prefix: prefix.clone(),
            ..config(dir, Mode::Dev)
        };
        let a = authority(&on_redis(a_dir.path()), addr()).unwrap();
        let a_key = std::fs::read_to_string(a_dir.path().join(DEV_KEY_FILE)).unwrap();
        // Another host, with its own directory, on the same Redis: its own key, and A's
        // still works (it is A's, not a lost one).
        let b = authority(&on_redis(b_dir.path()), addr()).unwrap();
        let b_key = std::fs::read_to_string(b_dir.path().join(DEV_KEY_FILE)).unwrap();
        assert_ne!(a_key, b_key);
        assert!(b.keys.verify(&a_key).is_ok());
        assert!(a.keys.reload_if_changed().unwrap());
        assert!(a.keys.verify(&b_key).is_ok());
        // A restart of A finds its key again in Redis: nothing new.
        let again = authority(&on_redis(a_dir.path()), addr()).unwrap();
        assert_eq!(again.keys.list().len(), 2);
    }
}
