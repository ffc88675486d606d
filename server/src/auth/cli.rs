//! `herald keys add|list|revoke`: key management from the command line, against the key
//! table the servers use: the database (`--db`), or Redis with `--store redis` (every node
//! on it). A running server sees the change within [`super::keys::WATCH_INTERVAL`].

use super::scope::Grants;
use crate::config::{Config, KeysCommand};
use anyhow::Context as _;

pub fn keys(config: &Config, cmd: &KeysCommand) -> anyhow::Result<()> {
    let keys = super::setup::open_keys(config)?;
    match cmd {
        KeysCommand::Add {
            name,
            allow,
            from_stdin,
        } => {
            let grants = Grants::from_scopes(allow).map_err(anyhow::Error::msg)?;
            if *from_stdin {
                let mut line = String::new();
                std::io::stdin()
                    .read_line(&mut line)
                    .context("reading the key from standard input")?;
                let rec = keys.add_existing(name, line.trim(), grants, false)?;
                eprintln!(
                    "Imported key {} ({}) with {}.",
                    rec.id,
                    rec.name,
                    rec.grants.scopes().join(" ")
                );
            } else {
                let (rec, key) = keys.add(name, grants, false)?;
                eprintln!(
                    "Created key {} ({}) with {}. It is shown only now: keep it somewhere safe.",
                    rec.id,
                    rec.name,
                    rec.grants.scopes().join(" ")
                );
                println!("{key}");
            }
        }
        KeysCommand::List { json } => {
            let all = keys.list();
            if *json {
                for k in &all {
                    println!("{}", serde_json::to_string(k)?);
                }
            } else {
                println!("{:<12}  {:<20}  {:<8}  scopes", "id", "name", "state");
                for k in &all {
                    let state = match (k.revoked, k.dev) {
                        (Some(_), _) => "revoked",
                        (None, true) => "dev",
                        (None, false) => "active",
                    };
                    println!(
                        "{:<12}  {:<20}  {:<8}  {}",
                        k.id,
                        k.name,
                        state,
                        k.grants.scopes().join(" ")
                    );
                }
            }
        }
        KeysCommand::Revoke { id } => {
            if keys.revoke(id)? {
                eprintln!("Revoked key {id}; it stops working at once.");
            } else {
                anyhow::bail!("no active key with id {id}");
            }
        }
    }
    Ok(())
}
