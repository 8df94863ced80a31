//! Human passwords: Argon2id in PHC strings.
//!
//! Only passwords typed by people are hashed here; machine-generated secrets (client secrets,
//! tokens) use the fast keyed hash of [`token`](crate::token), because they carry 256 bits
//! of entropy and need no key stretching.
//!
//! Hashing and verifying are deliberately slow (tens of milliseconds with the OWASP
//! parameters): call them from a blocking thread (`tokio::task::spawn_blocking`), never on
//! an async worker.

use std::fmt;

use argon2::password_hash::{
    PasswordHash as Phc, PasswordHasher as _, PasswordVerifier as _, SaltString,
};
use argon2::{Algorithm, Argon2, Params, Version};

use crate::error::{Error, Result};
use crate::secret::Password;
use crate::token::random_bytes;

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over memory.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl PasswordParams {
    /// OWASP's recommendation for Argon2id (Password Storage Cheat Sheet): 19 MiB, 2
    /// passes, 1 lane. The default.
    pub const OWASP: PasswordParams = PasswordParams {
        memory_kib: 19 * 1024,
        iterations: 2,
        parallelism: 1,
    };

    /// Checks the parameters are ones Argon2 accepts and not uselessly weak: at least 8 MiB
    /// unless `allow_weak` (for tests).
    pub fn validate(&self, allow_weak: bool) -> Result<()> {
        if !allow_weak && self.memory_kib < 8 * 1024 {
            return Err(Error::Config {
                reason: "Argon2id memory below 8 MiB is too weak for passwords".into(),
            });
        }
        self.argon2().map(|_| ())
    }

    fn argon2(&self) -> Result<Argon2<'static>> {
        let params = Params::new(self.memory_kib, self.iterations, self.parallelism, None)
            .map_err(|e| Error::Config {
                reason: format!("invalid Argon2id parameters: {e}"),
            })?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }
}

impl Default for PasswordParams {
    fn default() -> Self {
        Self::OWASP
    }
}

/// A stored password hash: an Argon2id PHC string (`$argon2id$v=19$m=…`). Not a secret in the
/// sense of a token, but it must not leak (it allows offline guessing): `Debug` shows only
/// the algorithm and parameters.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash(String);

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: String = self.0.split('$').take(4).collect::<Vec<_>>().join("$");
        write!(f, "PasswordHash({shown}$…)")
    }
}

impl PasswordHash {
    /// Wraps a PHC string read back from storage (checked when used).
    pub fn from_phc(phc: String) -> Self {
        Self(phc)
    }

    /// The PHC string, for storage.
    pub fn as_phc(&self) -> &str {
        &self.0
    }
}

/// The outcome of a password check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verification {
    /// The password matches. `needs_rehash`: the hash was made with other parameters (or
    /// another algorithm): store [`PasswordHasher::hash`] of the password now.
    Valid {
        /// Whether to re-hash with the current parameters.
        needs_rehash: bool,
    },
    /// It does not (or the account does not exist).
    Invalid,
}

/// Hashes and verifies passwords with one set of parameters.
#[derive(Clone)]
pub struct PasswordHasher {
    params: PasswordParams,
    argon2: Argon2<'static>,
    /// A hash of a random password with the live parameters: verifying against it costs what
    /// a real verification costs.
    dummy: PasswordHash,
    /// Argon2id verifications run, shared by clones (observability, and the proof that the
    /// unknown-user path does the work).
    verifications: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordHasher")
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

/// The longest password accepted, in bytes: long enough for any passphrase, short enough
/// that hashing cannot be abused for denial of service.
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// The shortest password accepted, in characters (NIST SP 800-63B).
pub const MIN_PASSWORD_CHARS: usize = 8;

impl PasswordHasher {
    /// A hasher with `params` (checked; at least 8 MiB). Makes one hash up front for the
    /// unknown-user path.
    pub fn new(params: PasswordParams) -> Result<Self> {
        params.validate(false)?;
        Self::build(params)
    }

    /// Like [`new`](Self::new) but accepts weak parameters.
    ///
    /// # Security
    ///
    /// For tests only: weak parameters make stolen hashes cheap to crack.
    pub fn danger_weak_params_for_tests(params: PasswordParams) -> Result<Self> {
        params.validate(true)?;
        Self::build(params)
    }

    fn build(params: PasswordParams) -> Result<Self> {
        let argon2 = params.argon2()?;
        let mut me = Self {
            params,
            argon2,
            dummy: PasswordHash(String::new()),
            verifications: std::sync::Arc::default(),
        };
        let random = random_bytes::<24>()?;
        let filler: String = random.iter().map(|b| char::from(b'a' + b % 26)).collect();
        me.dummy = me.hash_unchecked(filler.as_bytes())?;
        Ok(me)
    }

    /// How many Argon2id verifications this hasher (and its clones) ran.
    pub fn verifications(&self) -> u64 {
        self.verifications
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The parameters new hashes use.
    pub fn params(&self) -> PasswordParams {
        self.params
    }

    /// Checks a new password against the policy: 8 to 1024 characters/bytes, no NUL. (The
    /// policy is deliberately NIST's: length, no composition rules.)
    pub fn check_policy(password: &Password) -> Result<()> {
        let p = password.secret();
        if p.chars().count() < MIN_PASSWORD_CHARS {
            return Err(Error::invalid(
                "password",
                format!("at least {MIN_PASSWORD_CHARS} characters"),
            ));
        }
        if p.len() > MAX_PASSWORD_BYTES {
            return Err(Error::invalid(
                "password",
                format!("at most {MAX_PASSWORD_BYTES} bytes"),
            ));
        }
        if p.contains('\0') {
            return Err(Error::invalid("password", "must not contain NUL"));
        }
        Ok(())
    }

    /// Hashes a new password (after [`check_policy`](Self::check_policy)) with a random salt.
    pub fn hash(&self, password: &Password) -> Result<PasswordHash> {
        Self::check_policy(password)?;
        self.hash_unchecked(password.secret().as_bytes())
    }

    /// Re-hashes a password that just verified, with the current parameters (no policy
    /// check: it was accepted under the policy of its day).
    pub(crate) fn rehash(&self, password: &Password) -> Result<PasswordHash> {
        self.hash_unchecked(password.secret().as_bytes())
    }

    fn hash_unchecked(&self, password: &[u8]) -> Result<PasswordHash> {
        let salt_bytes = random_bytes::<16>()?;
        let salt = SaltString::encode_b64(salt_bytes.as_ref()).map_err(|e| Error::Config {
            reason: format!("salt encoding failed: {e}"),
        })?;
        let phc = self
            .argon2
            .hash_password(password, &salt)
            .map_err(|e| Error::Config {
                reason: format!("Argon2id hashing failed: {e}"),
            })?;
        Ok(PasswordHash(phc.to_string()))
    }

    /// Verifies `password` against a stored hash, in constant time. An oversized password is
    /// refused without hashing (it cannot match a policy-conforming one). A malformed stored
    /// hash is an [`Error::InvalidInput`], never a panic.
    pub fn verify(&self, password: &Password, stored: &PasswordHash) -> Result<Verification> {
        let phc = Phc::new(stored.as_phc())
            .map_err(|e| Error::invalid("password hash", format!("not a PHC string ({e})")))?;
        if password.secret().len() > MAX_PASSWORD_BYTES {
            return Ok(Verification::Invalid);
        }
        self.verifications
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match self
            .argon2
            .verify_password(password.secret().as_bytes(), &phc)
        {
            Ok(()) => Ok(Verification::Valid {
                needs_rehash: self.needs_rehash(stored),
            }),
            Err(argon2::password_hash::Error::Password) => Ok(Verification::Invalid),
            Err(e) => Err(Error::invalid(
                "password hash",
                format!("cannot be verified ({e})"),
            )),
        }
    }

    /// The unknown-user path: runs a real verification against a hash with the live
    /// parameters and answers [`Verification::Invalid`], so a login for a user who does not
    /// exist costs what a wrong password costs.
    pub fn verify_unknown_user(&self, password: &Password) -> Verification {
        // The dummy hash is a valid PHC string made at construction; whatever it answers,
        // the account does not exist.
        let _ = self.verify(password, &self.dummy);
        Verification::Invalid
    }

    /// Whether `stored` was made with other parameters or algorithm than the current ones.
    pub fn needs_rehash(&self, stored: &PasswordHash) -> bool {
        let Ok(phc) = Phc::new(stored.as_phc()) else {
            return true;
        };
        let Ok(p) = Params::try_from(&phc) else {
            return true;
        };
        phc.algorithm.as_str() != "argon2id"
            || p.m_cost() != self.params.memory_kib
            || p.t_cost() != self.params.iterations
            || p.p_cost() != self.params.parallelism
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEAK: PasswordParams = PasswordParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    fn pw(s: &str) -> Password {
        Password::new(s.to_owned())
    }

    #[test]
    fn hash_verify_rehash() {
        let h = PasswordHasher::danger_weak_params_for_tests(WEAK).unwrap();
        let stored = h.hash(&pw("correct horse battery")).unwrap();
        assert!(stored.as_phc().starts_with("$argon2id$v=19$m=64,t=1,p=1$"));
        assert_eq!(
            h.verify(&pw("correct horse battery"), &stored).unwrap(),
            Verification::Valid {
                needs_rehash: false
            }
        );
        assert_eq!(
            h.verify(&pw("correct horse battery!"), &stored).unwrap(),
            Verification::Invalid
        );
        // Salts differ.
        assert_ne!(h.hash(&pw("correct horse battery")).unwrap(), stored);
        // New parameters: the old hash still verifies and asks for a rehash.
        let stronger = PasswordHasher::danger_weak_params_for_tests(PasswordParams {
            memory_kib: 128,
            ..WEAK
        })
        .unwrap();
        assert_eq!(
            stronger
                .verify(&pw("correct horse battery"), &stored)
                .unwrap(),
            Verification::Valid { needs_rehash: true }
        );
        assert!(!stronger.needs_rehash(&stronger.hash(&pw("correct horse battery")).unwrap()));
    }

    #[test]
    fn policy_and_bad_input() {
        let h = PasswordHasher::danger_weak_params_for_tests(WEAK).unwrap();
        assert!(h.hash(&pw("short")).is_err());
        assert!(h.hash(&pw(&"x".repeat(MAX_PASSWORD_BYTES + 1))).is_err());
        assert!(h.hash(&pw("with\0nul-inside")).is_err());
        assert!(h.hash(&pw("ünïcødé pässwörd")).is_ok());
        // A malformed stored hash is a typed error, not a panic.
        for bad in [
            "",
            "$argon2id$",
            "plaintext",
            "$argon2id$v=19$m=64,t=1,p=1$@@@$@@@",
        ] {
            assert!(
                h.verify(
                    &pw("whatever-password"),
                    &PasswordHash::from_phc(bad.into())
                )
                .is_err(),
                "{bad}"
            );
            assert!(h.needs_rehash(&PasswordHash::from_phc(bad.into())));
        }
        assert!(
            PasswordHasher::new(WEAK).is_err(),
            "weak parameters need the danger constructor"
        );
        assert!(PasswordParams::OWASP.validate(false).is_ok());
    }

    #[test]
    fn unknown_user_path_runs_a_real_verification() {
        let h = PasswordHasher::danger_weak_params_for_tests(WEAK).unwrap();
        // Its dummy hash is a real Argon2id hash with the live parameters, so verifying
        // against it does the same work as a real account's verification.
        assert!(Phc::new(h.dummy.as_phc()).is_ok());
        assert!(!h.needs_rehash(&h.dummy));
        assert_eq!(
            h.verify_unknown_user(&pw("any password at all")),
            Verification::Invalid
        );
    }

    #[test]
    fn nothing_secret_in_debug() {
        let h = PasswordHasher::danger_weak_params_for_tests(WEAK).unwrap();
        let stored = h.hash(&pw("hunter2-hunter2")).unwrap();
        let salt_and_hash = stored
            .as_phc()
            .rsplitn(3, '$')
            .take(2)
            .collect::<Vec<_>>()
            .join("$");
        let shown = format!("{stored:?} {h:?} {:?}", pw("hunter2-hunter2"));
        assert!(!shown.contains("hunter2"));
        assert!(!shown.contains(&salt_and_hash));
        for part in stored.as_phc().rsplitn(3, '$').take(2) {
            assert!(!shown.contains(part), "{shown}");
        }
    }
}
