//! Handles are capabilities, not state (Chubby §2.6): a token that binds (session, node
//! instance, rights) and is signed with the cell key kept in the replicated state, so any
//! master verifies it and nobody can forge or widen one.

use bytes::{BufMut, Bytes, BytesMut};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::command::{Rights, SessionId};
use super::error::StateError;

/// Bytes of HMAC-SHA256 kept in a token.
const TAG: usize = 16;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandleBody {
    pub session: SessionId,
    pub path: String,
    pub instance: u64,
    pub rights: Rights,
    pub ephemeral: bool,
    /// The id of a handle to an ephemeral node (see [`Reply::OpenedEphemeral`]); 0 for other
    /// nodes, whose handles need no log entry.
    ///
    /// [`Reply::OpenedEphemeral`]: super::Reply::OpenedEphemeral
    pub handle: u64,
}

/// A handle's body as signed before handles had ids: still accepted, with id 0.
#[derive(Deserialize)]
struct LegacyBody {
    session: SessionId,
    path: String,
    instance: u64,
    rights: Rights,
    ephemeral: bool,
}

fn mac(key: &[u8]) -> Hmac<Sha256> {
    <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes a key of any length")
}

/// The token for `body`: its encoding followed by a truncated HMAC-SHA256 of it.
pub fn sign(key: &[u8], body: &HandleBody) -> Bytes {
    let encoded = super::command::encode(body);
    let mut m = mac(key);
    m.update(&encoded);
    let tag = m.finalize().into_bytes();
    let mut out = BytesMut::with_capacity(encoded.len() + TAG);
    out.put_slice(&encoded);
    out.put_slice(&tag[..TAG]);
    out.freeze()
}

/// The token that proves a session on calls that carry no handle (Open, CloseSession,
/// resuming the session stream): session ids are small numbers anyone could guess.
pub fn session_token(key: &[u8], session: SessionId) -> Bytes {
    let mut m = mac(key);
    m.update(b"session:");
    m.update(&session.to_le_bytes());
    Bytes::copy_from_slice(&m.finalize().into_bytes()[..TAG])
}

pub fn verify_session_token(key: &[u8], session: SessionId, token: &[u8]) -> Result<(), StateError> {
    let mut m = mac(key);
    m.update(b"session:");
    m.update(&session.to_le_bytes());
    if key.is_empty() || token.len() != TAG || m.verify_truncated_left(token).is_err() {
        return Err(StateError::PermissionDenied(format!("not a token of session {session}")));
    }
    Ok(())
}

/// The body of a token signed with `key`, or `PermissionDenied` for anything else.
pub fn verify(key: &[u8], token: &[u8]) -> Result<HandleBody, StateError> {
    let forged = || StateError::PermissionDenied("invalid handle (forged, damaged or from another cell)".into());
    if key.is_empty() || token.len() <= TAG {
        return Err(forged());
    }
    let (encoded, tag) = token.split_at(token.len() - TAG);
    let mut m = mac(key);
    m.update(encoded);
    m.verify_truncated_left(tag).map_err(|_| forged())?;
    if let Ok(body) = postcard::from_bytes(encoded) {
        return Ok(body);
    }
    let LegacyBody { session, path, instance, rights, ephemeral } =
        postcard::from_bytes(encoded).map_err(|_| forged())?;
    Ok(HandleBody { session, path, instance, rights, ephemeral, handle: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forged_and_altered_handles_are_refused() {
        let key = [7u8; 32];
        let body = HandleBody {
            session: 3,
            path: "/a".into(),
            instance: 9,
            rights: Rights::READ,
            ephemeral: true,
            handle: 12,
        };
        let token = sign(&key, &body);
        assert_eq!(verify(&key, &token), Ok(body.clone()));
        assert!(verify(&[8u8; 32], &token).is_err(), "another cell's key");
        for i in 0..token.len() {
            for bit in 0..8 {
                let mut t = token.to_vec();
                t[i] ^= 1 << bit;
                assert!(verify(&key, &t).is_err(), "flip at byte {i} bit {bit}");
            }
        }
        assert!(verify(&key, &token[..token.len() - 1]).is_err());
        assert!(verify(&key, b"").is_err());
        assert!(verify(&[], &token).is_err(), "a cell without a key accepts nothing");
        let st = session_token(&key, 3);
        assert_eq!(verify_session_token(&key, 3, &st), Ok(()));
        assert!(verify_session_token(&key, 4, &st).is_err(), "another session's token");
        assert!(verify_session_token(&[8u8; 32], 3, &st).is_err());
        assert!(verify_session_token(&key, 3, &st[..15]).is_err());
    }

    /// A handle signed before handles had ids still works after an upgrade, as id 0.
    #[test]
    fn a_handle_without_an_id_is_read_as_id_zero() {
        #[derive(Serialize)]
        struct Old<'a>(SessionId, &'a str, u64, Rights, bool);
        let key = [7u8; 32];
        let encoded = crate::state::command::encode(&Old(3, "/e", 9, Rights::READ, true));
        let mut m = mac(&key);
        m.update(&encoded);
        let token = [&encoded[..], &m.finalize().into_bytes()[..TAG]].concat();
        let body =
            HandleBody { session: 3, path: "/e".into(), instance: 9, rights: Rights::READ, ephemeral: true, handle: 0 };
        assert_eq!(verify(&key, &token), Ok(body));
    }
}
