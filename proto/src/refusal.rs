//! Why the cell refused a call, by name: the cell sets it in the [`ERROR_METADATA`] key of a
//! refusal (and in a streamed call's answer), clients act on it. One list for both sides, so a
//! name cannot be spelt two ways.

use std::fmt;

use crate::ERROR_METADATA;

macro_rules! refusals {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Refusal {
            $($(#[$doc])* $name,)*
        }

        impl Refusal {
            /// Every refusal.
            pub const ALL: &'static [Refusal] = &[$(Refusal::$name,)*];

            /// The name on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Refusal::$name => stringify!($name),)*
                }
            }

            /// The refusal a name on the wire stands for (`None`: one this build does not know).
            pub fn parse(name: &str) -> Option<Refusal> {
                match name {
                    $(stringify!($name) => Some(Refusal::$name),)*
                    _ => None,
                }
            }
        }
    };
}

refusals! {
    InvalidArgument,
    NotFound,
    Exists,
    TooLarge,
    PermissionDenied,
    NotEmpty,
    NotADirectory,
    IsADirectory,
    /// A conditional write or delete named another content (or ACL) generation.
    GenerationMismatch,
    /// A fenced call's sequencer no longer names a lock its holder holds.
    StaleSequencer,
    /// The node a handle names was deleted or re-created since it was opened.
    StaleHandle,
    /// The session expired or was closed.
    NoSession,
    /// A TryAcquire found the lock held.
    LockBusy,
    /// A Release or GetSequencer of a lock the owner does not hold.
    NotHeld,
    LimitExceeded,
    /// A queued Acquire ended without a grant.
    WaitEnded,
    /// A retried call whose answer the cell no longer remembers.
    Forgotten,
    /// A Delete of a node whose lock is held or waited for.
    LockHeld,
    /// A call made under an older master's epoch: resume the session at this master first.
    StaleEpoch,
    /// A rename the cell cannot make as one atomic change (a directory, an ephemeral node).
    NotMovable,
    /// A blocking lock upgrade that would wait forever (another holder waits to upgrade).
    Deadlock,
    /// A membership change the cell will not make: it would leave no working majority, or
    /// the member is not ready for it.
    MembershipRefused,
}

impl Refusal {
    /// The refusal a status's metadata names, if any this build knows.
    pub fn of_metadata(metadata: &tonic::metadata::MetadataMap) -> Option<Refusal> {
        metadata.get(ERROR_METADATA).and_then(|v| v.to_str().ok()).and_then(Refusal::parse)
    }

    /// The refusal's name as a metadata value.
    pub fn metadata_value(self) -> tonic::metadata::MetadataValue<tonic::metadata::Ascii> {
        tonic::metadata::MetadataValue::from_static(self.as_str())
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names are a wire format: clients of other builds match on them.
    #[test]
    fn refusal_names_are_stable_and_parse_back() {
        let names: Vec<&str> = Refusal::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            names,
            [
                "InvalidArgument",
                "NotFound",
                "Exists",
                "TooLarge",
                "PermissionDenied",
                "NotEmpty",
                "NotADirectory",
                "IsADirectory",
                "GenerationMismatch",
                "StaleSequencer",
                "StaleHandle",
                "NoSession",
                "LockBusy",
                "NotHeld",
                "LimitExceeded",
                "WaitEnded",
                "Forgotten",
                "LockHeld",
                "StaleEpoch",
                "NotMovable",
                "Deadlock",
                "MembershipRefused",
            ]
        );
        for &r in Refusal::ALL {
            assert_eq!(Refusal::parse(r.as_str()), Some(r));
        }
        assert_eq!(Refusal::parse("SomethingNew"), None);
    }
}
