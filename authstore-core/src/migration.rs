//! Schema migrations as every backend keeps them: immutable numbered SQL files embedded in
//! the binary, each recorded when applied with the BLAKE3 checksum of its text.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// One schema migration: an immutable SQL file under a backend's `migrations/`, embedded in
/// the binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    /// Its version (the file's number); applied in increasing order.
    pub version: i64,
    /// Its name (the rest of the file name).
    pub name: &'static str,
    /// Its SQL text.
    pub sql: &'static str,
}

impl Migration {
    /// The BLAKE3 hex digest of [`sql`](Self::sql), recorded when the migration is applied
    /// and compared on every later `migrate`.
    pub fn checksum(&self) -> String {
        blake3::hash(self.sql.as_bytes()).to_hex().to_string()
    }
}

/// The newest version in `embedded` (0 when empty).
pub fn newest(embedded: &[Migration]) -> i64 {
    embedded.iter().map(|m| m.version).max().unwrap_or(0)
}

/// Checks what a database has applied (`version -> (name, checksum)`) against the embedded
/// migrations: a newer schema is [`Error::SchemaTooNew`], an applied migration whose text
/// changed is [`Error::MigrationChecksum`]. Changes nothing.
pub fn verify_applied(
    embedded: &[Migration],
    applied: &BTreeMap<i64, (String, String)>,
) -> Result<()> {
    let supported = newest(embedded);
    if let Some((&found, _)) = applied.last_key_value() {
        if found > supported {
            return Err(Error::SchemaTooNew { found, supported });
        }
    }
    for m in embedded {
        if let Some((_, checksum)) = applied.get(&m.version) {
            if *checksum != m.checksum() {
                return Err(Error::MigrationChecksum {
                    version: m.version,
                    name: m.name.into(),
                });
            }
        }
    }
    Ok(())
}

/// Checks a backend's embedded list: versions 1, 2, 3, … in order, LF line endings (so the
/// checksum is the same on every checkout). For each backend's unit tests.
pub fn check_embedded(embedded: &[Migration]) -> Result<()> {
    for (i, m) in embedded.iter().enumerate() {
        if i64::try_from(i + 1).ok() != Some(m.version) {
            return Err(Error::Config {
                reason: format!(
                    "migration {} is out of sequence (expected {})",
                    m.version,
                    i + 1
                ),
            });
        }
        if m.sql.contains('\r') {
            return Err(Error::Config {
                reason: format!(
                    "migration {} has CR line endings; keep *.sql eol=lf",
                    m.version
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: &[Migration] = &[
        Migration {
            version: 1,
            name: "a",
            sql: "CREATE TABLE a (x int);",
        },
        Migration {
            version: 2,
            name: "b",
            sql: "CREATE TABLE b (x int);",
        },
    ];

    #[test]
    fn verify_refuses_newer_and_edited() {
        let mut applied = BTreeMap::new();
        verify_applied(M, &applied).unwrap();
        applied.insert(1, ("a".into(), M[0].checksum()));
        verify_applied(M, &applied).unwrap();
        applied.insert(1, ("a".into(), "edited".into()));
        assert!(matches!(
            verify_applied(M, &applied),
            Err(Error::MigrationChecksum { version: 1, .. })
        ));
        applied.insert(1, ("a".into(), M[0].checksum()));
        applied.insert(3, ("c".into(), "x".into()));
        assert!(matches!(
            verify_applied(M, &applied),
            Err(Error::SchemaTooNew {
                found: 3,
                supported: 2
            })
        ));
        check_embedded(M).unwrap();
        assert!(check_embedded(&M[1..]).is_err());
    }
}
