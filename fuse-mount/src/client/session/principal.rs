//! Who a client is to the cell: `NAME@HOST` for a user of this host. The cell trusts the
//! name a host presents (mutual TLS is for later), as Chubby's cells trust their clients'
//! credentials.

/// The principal a client presents for user `uid` of this host: `NAME@HOST`, with the
/// user's name from the password database (`uid<N>` if it has none) and the host's name.
/// The `chubby` CLI and the mount name one user alike, so the cell's ACLs treat both the same.
pub fn principal_of(uid: u32) -> String {
    let user = user_name(uid).unwrap_or_else(|| format!("uid{uid}"));
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    if host.is_empty() {
        user
    } else {
        format!("{user}@{host}")
    }
}

/// A list of principal names as the `chubby acl` flags and the mount's `user.chubby.acl.*`
/// attributes give it: separated by commas or newlines, blanks around names dropped (`*` is
/// everyone).
pub fn principal_list(text: &str) -> Vec<String> {
    text.split([',', '\n']).map(str::trim).filter(|n| !n.is_empty()).map(String::from).collect()
}

/// The password database's name for `uid`.
fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: an all-zero passwd is a valid value of this plain C struct (null pointers).
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is to memory owned here and live for the call; `buf`'s length is
    // passed with it, and getpwuid_r writes only within `pwd` and `buf`.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr().cast(), buf.len(), &mut found) };
    if rc != 0 || found.is_null() || pwd.pw_name.is_null() {
        return None;
    }
    // SAFETY: on success pw_name points to a NUL-terminated string inside `buf`.
    let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
    Some(name.to_string_lossy().into_owned()).filter(|n| !n.is_empty())
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
