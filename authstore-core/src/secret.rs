//! Secret newtypes: one macro defines them all.
//!
//! A secret has a redacted `Debug`, no `Display`, no `PartialEq` (compare hashes in constant
//! time instead), an explicit [`secret`](ClientSecret::secret) accessor, and its bytes are
//! zeroized when it is dropped.

/// Defines a secret newtype around a `String`: redacted `Debug`, no `Display`, an explicit
/// `secret()` accessor, zeroized on drop.
///
/// ```
/// authstore_core::secret_type! {
///     /// A webhook signing secret.
///     pub struct WebhookSecret;
/// }
/// let s = WebhookSecret::new("hunter2".to_owned());
/// assert_eq!(format!("{s:?}"), "WebhookSecret([redacted])");
/// assert_eq!(s.secret(), "hunter2");
/// ```
#[macro_export]
macro_rules! secret_type {
    ($(#[$meta:meta])* $vis:vis struct $name:ident;) => {
        $(#[$meta])*
        #[derive(Clone)]
        $vis struct $name($crate::__private::Zeroizing<::std::string::String>);

        impl $name {
            /// Wraps a secret value.
            pub fn new(value: ::std::string::String) -> Self {
                Self($crate::__private::Zeroizing::new(value))
            }

            /// The secret value.
            ///
            /// # Security
            ///
            /// This exposes the secret. Do not log it, put it in an error, or store it: store
            /// only its keyed hash. Send it to its owner once, over a secure channel.
            pub fn secret(&self) -> &str {
                self.0.as_str()
            }
        }

        impl ::std::fmt::Debug for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(concat!(stringify!($name), "([redacted])"))
            }
        }
    };
}

secret_type! {
    /// A client secret, shown to the client's owner once at creation or rotation.
    pub struct ClientSecret;
}
secret_type! {
    /// An authorization code as sent to the client.
    pub struct CodeSecret;
}
secret_type! {
    /// An access token as sent to the client.
    pub struct AccessTokenSecret;
}
secret_type! {
    /// A refresh token as sent to the client.
    pub struct RefreshTokenSecret;
}
secret_type! {
    /// A personal access token as shown to its user once.
    pub struct PatSecret;
}
secret_type! {
    /// A human's password, as typed. Only its Argon2id hash is ever stored.
    pub struct Password;
}
secret_type! {
    /// The handle of an authorization session (an authorization request in flight).
    pub struct AuthorizationSessionSecret;
}
secret_type! {
    /// A login session handle (the cookie value).
    pub struct LoginSessionSecret;
}
secret_type! {
    /// A one-time token (password reset, email verification, magic link), sent by email.
    pub struct OneTimeTokenSecret;
}
secret_type! {
    /// A recovery code, shown to its user once.
    pub struct RecoveryCode;
}
secret_type! {
    /// A TOTP shared secret in base32, shown to its user once (as a QR code).
    pub struct TotpSecret;
}
secret_type! {
    /// A third-party provider's token (linked accounts), sealed at rest.
    pub struct ProviderToken;
}
secret_type! {
    /// The handle of a WebAuthn ceremony in progress.
    pub struct CeremonySecret;
}
