//! Passkeys from webauthn-rs types (feature `webauthn`).
#![cfg(feature = "webauthn")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use authstore::core::{
    Authstore, ManualClock, NewPasskey, NewUser, Timestamp, TokenKey, TokenKeyring,
};
use webauthn_rs::prelude::{AuthenticationResult, Passkey};
use webauthn_rs_core::proto::{
    AttestationFormat, AttestationMetadata, COSEAlgorithm, COSEEC2Key, COSEKey, COSEKeyType,
    Credential, ECDSACurve, ParsedAttestation, ParsedAttestationData, RegisteredExtensions,
    UserVerificationPolicy,
};

/// A webauthn-rs Passkey as `finish_passkey_registration` would return it.
fn passkey(id: &[u8], counter: u32) -> Passkey {
    Credential {
        cred_id: id.to_vec(),
        cred: COSEKey {
            type_: COSEAlgorithm::ES256,
            key: COSEKeyType::EC_EC2(COSEEC2Key {
                curve: ECDSACurve::SECP256R1,
                x: vec![7; 32],
                y: vec![8; 32],
            }),
        },
        counter,
        transports: None,
        user_verified: true,
        backup_eligible: true,
        backup_state: false,
        registration_policy: UserVerificationPolicy::Required,
        extensions: RegisteredExtensions::none(),
        attestation: ParsedAttestation {
            data: ParsedAttestationData::None,
            metadata: AttestationMetadata::None,
        },
        attestation_format: AttestationFormat::None,
    }
    .into()
}

#[tokio::test]
async fn webauthn_passkeys_round_trip_and_update_after_use() {
    let store = Authstore::new(
        authstore::open("memory:").await.unwrap(),
        TokenKeyring::new(TokenKey::generate("k").unwrap()),
    )
    .with_clock(Arc::new(ManualClock::new(Timestamp::from_unix_micros(
        1_767_225_600_000_000,
    ))));
    let user = store.create_user(NewUser::new("quinn")).await.unwrap();
    let pk = passkey(&[1, 2, 3], 5);
    let stored = store
        .register_passkey(NewPasskey::from_webauthn(user.id, "Key", &pk).unwrap())
        .await
        .unwrap();
    assert_eq!(stored.credential_id, vec![1, 2, 3]);
    assert_eq!(stored.counter, 5);
    assert!(!stored.backup_state);
    let back = store
        .passkey(&[1, 2, 3])
        .await
        .unwrap()
        .to_webauthn()
        .unwrap();
    assert_eq!(
        serde_json::to_value(&back).unwrap(),
        serde_json::to_value(&pk).unwrap()
    );
    assert_eq!(store.webauthn_passkeys(user.id).await.unwrap().len(), 1);

    // What finish_passkey_authentication returns after a use that moved the counter.
    let result: AuthenticationResult = serde_json::from_value(serde_json::json!({
        "cred_id": "AQID", "needs_update": true, "user_verified": true,
        "backup_state": true, "backup_eligible": true, "counter": 9, "extensions": {}
    }))
    .unwrap();
    store.record_passkey_authentication(&result).await.unwrap();
    let after = store.passkey(&[1, 2, 3]).await.unwrap();
    assert_eq!((after.counter, after.backup_state), (9, true));
    assert_eq!(
        after.credential["cred"]["counter"], 9,
        "the stored webauthn-rs credential was updated too"
    );
}
