//! Who a client is to the cell: `NAME@HOST` for a user of this host. On mutual TLS the cell
//! takes the name from the connection's certificate (a user's own, or a host's for its users:
//! see `proto::tls`); on a plaintext cell (`--insecure`) it takes the name a client presents.

/// The principal a client presents for user `uid` of this host: `NAME@HOST`, with the
/// user's name from the password database (`uid<N>` if it has none) and the host's name.
/// The `chubby` CLI and the mount name one user alike, so the cell's ACLs treat both the same.
pub fn principal_of(uid: u32) -> String {
    proto::tls::local_principal(uid)
}

/// The principal a session for user `uid` asks for over a connection with identity `tls`:
/// with a user's certificate, that user (the cell accepts no other); with a host's
/// (`host/NAME`), the user of that host; without TLS, [`principal_of`].
pub fn principal_for(uid: u32, tls: Option<&proto::tls::Identity>) -> String {
    use proto::tls::Principal;
    match tls.map(|id| Principal::parse(&id.principal)) {
        None => principal_of(uid),
        Some(Principal::Host(host)) => {
            format!("{}@{host}", proto::tls::user_name(uid).unwrap_or_else(|| format!("uid{uid}")))
        }
        Some(Principal::User(name)) => name,
        // Refused by the cell, which says why.
        Some(Principal::Replica(id)) => format!("replica/{id}"),
    }
}

/// A list of principal names as the `chubby acl` flags and the mount's `user.chubby.acl.*`
/// attributes give it: separated by commas or newlines, blanks around names dropped (`*` is
/// everyone).
pub fn principal_list(text: &str) -> Vec<String> {
    text.split([',', '\n']).map(str::trim).filter(|n| !n.is_empty()).map(String::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_principal_names_the_user_of_a_uid_on_this_host() {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default().trim().to_string();
        let at = |user: &str| if host.is_empty() { user.to_string() } else { format!("{user}@{host}") };
        assert_eq!(principal_of(0), at("root"));
        // A uid with no account is named by its number.
        assert_eq!(principal_of(3_999_999_999), at("uid3999999999"));
    }
}
