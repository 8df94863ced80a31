#![doc = include_str!("../README.md")]

mod accounts;
mod accounts2;
pub mod audit;
pub mod backend;
mod error;
pub mod identity;
pub mod migration;
pub mod model;
pub mod password;
pub mod seal;
pub mod secret;
mod store;
mod time;
pub mod token;
pub mod totp;

pub use accounts2::{NewPasskey, RECOVERY_CODES, ResealReport};
pub use audit::{AuditContext, AuditEvent, AuditKind, AuditQuery};
pub use backend::{Backend, KeyCheck, KeyRingKind};
pub use error::{Error, Result};
pub use identity::{
    Ceremony, CeremonyKind, FailureCounts, Group, GroupId, LinkedAccount, LinkedAccountId,
    LoginSession, LoginSessionId, NewUser, OneTimePurpose, OneTimeToken, Passkey, TotpRecord, User,
    UserId, UserUpdate,
};
pub use model::*;
pub use password::{PasswordHash, PasswordHasher, PasswordParams, Verification};
pub use seal::{SealContext, Sealed, SealingKey, SealingKeyring};
pub use secret::*;
pub use store::*;
pub use time::{Clock, ManualClock, SystemClock, Timestamp};
pub use token::{TokenFormat, TokenHash, TokenKey, TokenKeyring, TokenKind};

#[doc(hidden)]
pub mod __private {
    pub use zeroize::Zeroizing;
}
